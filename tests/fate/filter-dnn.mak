# dnn_processing with the torch backend.  The models are TorchScript made by
# torch.jit.script (tests/fate_refs.py in the series' source repository
# writes them into the samples, under dnn-torch/); the references are
# PyTorch's own output on the same frames.
DNN_TORCH_SRC = -f lavfi -i testsrc2=s=64x48:r=25:d=0.4,format=
DNN_TORCH_VF  = dnn_processing=dnn_backend=torch:model=$(TARGET_SAMPLES)/dnn-torch

FATE_FILTER_DNN_TORCH-$(call FILTERFRAMECRC, DNN_PROCESSING TESTSRC2 FORMAT, LAVFI_INDEV LIBTORCH) += \
    fate-filter-dnn_processing-torch-rgb24                                                           \
    fate-filter-dnn_processing-torch-rgb24-batch                                                     \
    fate-filter-dnn_processing-torch-yuv420p

# channel mixing with power-of-two weights: exact, so PyTorch's frames bit for bit
fate-filter-dnn_processing-torch-rgb24: CMD = framecrc $(DNN_TORCH_SRC)rgb24 -vf $(DNN_TORCH_VF)/conv1x1.pt:async=0

# two requests in flight, batches of 3 over 10 frames: the same frames
fate-filter-dnn_processing-torch-rgb24-batch: CMD = framecrc $(DNN_TORCH_SRC)rgb24 -vf $(DNN_TORCH_VF)/conv1x1.pt:async=1:nireq=2:batch_size=3
fate-filter-dnn_processing-torch-rgb24-batch: REF = $(SRC_PATH)/tests/ref/fate/filter-dnn_processing-torch-rgb24

# a 1-channel model on the Y plane; the chroma passes through
fate-filter-dnn_processing-torch-yuv420p: CMD = framecrc $(DNN_TORCH_SRC)yuv420p -vf $(DNN_TORCH_VF)/gray.pt

FATE_SAMPLES_FFMPEG += $(FATE_FILTER_DNN_TORCH-yes)
fate-filter-dnn_processing-torch: $(FATE_FILTER_DNN_TORCH-yes)
