// The limit for the filter: the bare forward() of a TorchScript model (or
// the run() of an AOTInductor package, MODEL ending in .pt2) on a ready
// input tensor, with the thread count and graph executor setting the filter
// uses.  Prints frames per second.
//
//   forward MODEL CHANNELS HEIGHT WIDTH BATCH THREADS OPTIMIZE ITERATIONS
//           [DEVICE [LAYOUT [STREAMS]]]
//
// OPTIMIZE as the filter's option: 0 none, 1 graph executor, 2 freeze.
// DEVICE is cpu (the default) or cuda: the model and the input on the GPU,
// timed up to the end of the GPU work.  LAYOUT is the input's memory format,
// contiguous (the default) or channels_last.  STREAMS runs that many
// forward() loops at once on threads of their own, each on its own input,
// as requests in flight do; THREADS is then the intra-op count each uses.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <functional>
#include <thread>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/version.h>
// Packages need LibTorch 2.10, as in the filter.
#define PACKAGES (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 10))
#if PACKAGES
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#endif

int main(int argc, char **argv)
{
    if (argc < 9 || argc > 12) {
        std::fprintf(stderr, "usage: %s MODEL C H W BATCH THREADS OPTIMIZE ITERATIONS "
                     "[DEVICE [LAYOUT [STREAMS]]]\n", argv[0]);
        return 2;
    }
    int c = std::atoi(argv[2]), h = std::atoi(argv[3]), w = std::atoi(argv[4]);
    int batch = std::atoi(argv[5]), threads = std::atoi(argv[6]);
    int optimize = std::atoi(argv[7]), iterations = std::atoi(argv[8]);
    bool channels_last = argc > 10 && !std::strcmp(argv[10], "channels_last");
    int streams = argc > 11 ? std::max(1, std::atoi(argv[11])) : 1;

    try {
        torch::Device device(argc > 9 ? argv[9] : "cpu");
        auto sync = [&]() {
            if (device.is_cuda())
                torch::cuda::synchronize();
        };
        at::set_num_threads(threads);
        torch::TensorOptions options = torch::TensorOptions().device(device).memory_format(
            channels_last ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::Contiguous);
        std::vector<torch::Tensor> inputs;
        for (int i = 0; i < streams; i++)
            inputs.push_back(torch::empty({ batch, c, h, w }, options).uniform_());
        std::function<void(const torch::Tensor &)> run;
        torch::jit::Module module;
        size_t len = std::strlen(argv[1]);
#if PACKAGES
        std::unique_ptr<torch::inductor::AOTIModelPackageLoader> package;
#endif

        if (len > 4 && !std::strcmp(argv[1] + len - 4, ".pt2")) {
#if PACKAGES
            package.reset(new torch::inductor::AOTIModelPackageLoader(
                argv[1], "model", false, 1, device.is_cuda() ? 0 : -1));
            run = [&](const torch::Tensor &input) { package->run({ input }); };
#else
            std::fprintf(stderr, "forward: packages need LibTorch 2.10 or later\n");
            return 1;
#endif
        } else {
            module = torch::jit::load(argv[1], device);
            module.eval();
            if (optimize == 2) {
                torch::jit::Module frozen = torch::jit::freeze(module);
                module = torch::jit::optimize_for_inference(frozen);
            }
            // Set after freezing, as the filter does: freezing needs the default.
            torch::jit::setGraphExecutorOptimize(optimize == 1);
            run = [&](const torch::Tensor &input) { module.forward({ input }); };
        }
        // Each stream warms up, then all start together.
        auto loop = [&](int stream, int count) {
            try {
                c10::InferenceMode guard;
                torch::jit::setGraphExecutorOptimize(optimize == 1);
                for (int i = 0; i < count; i++)
                    run(inputs[stream]);
            } catch (const std::exception &e) {
                std::fprintf(stderr, "forward: %s\n", e.what());
                std::_Exit(1);
            }
        };
        std::vector<std::thread> workers;
        for (int i = 0; i < streams; i++)
            workers.emplace_back(loop, i, 3);
        for (std::thread &t : workers)
            t.join();
        sync();
        workers.clear();
        auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < streams; i++)
            workers.emplace_back(loop, i, iterations);
        for (std::thread &t : workers)
            t.join();
        sync();
        std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
        std::printf("fps=%.3f\n", (double)iterations * batch * streams / elapsed.count());
    } catch (const std::exception &e) {
        std::fprintf(stderr, "forward: %s\n", e.what());
        return 1;
    }
    return 0;
}
