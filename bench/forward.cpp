// The limit for the filter: the bare forward() of a TorchScript model on a
// ready input tensor, with the thread count and graph executor setting the
// filter uses.  Prints frames per second.
//
//   forward MODEL CHANNELS HEIGHT WIDTH BATCH THREADS OPTIMIZE ITERATIONS
//
// OPTIMIZE as the filter's option: 0 none, 1 graph executor, 2 freeze.

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include <ATen/Parallel.h>
#include <torch/script.h>

int main(int argc, char **argv)
{
    if (argc != 9) {
        std::fprintf(stderr, "usage: %s MODEL C H W BATCH THREADS OPTIMIZE ITERATIONS\n", argv[0]);
        return 2;
    }
    int c = std::atoi(argv[2]), h = std::atoi(argv[3]), w = std::atoi(argv[4]);
    int batch = std::atoi(argv[5]), threads = std::atoi(argv[6]);
    int optimize = std::atoi(argv[7]), iterations = std::atoi(argv[8]);

    try {
        at::set_num_threads(threads);
        torch::jit::Module module = torch::jit::load(argv[1]);
        module.eval();
        if (optimize == 2) {
            torch::jit::Module frozen = torch::jit::freeze(module);
            module = torch::jit::optimize_for_inference(frozen);
        }
        // Set after freezing, as the filter does: freezing needs the default.
        torch::jit::setGraphExecutorOptimize(optimize == 1);
        c10::InferenceMode guard;
        std::vector<torch::jit::IValue> inputs{ torch::rand({ batch, c, h, w }) };
        for (int i = 0; i < 3; i++)
            module.forward(inputs);
        auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < iterations; i++)
            module.forward(inputs);
        std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
        std::printf("fps=%.3f\n", iterations * batch / elapsed.count());
    } catch (const std::exception &e) {
        std::fprintf(stderr, "forward: %s\n", e.what());
        return 1;
    }
    return 0;
}
