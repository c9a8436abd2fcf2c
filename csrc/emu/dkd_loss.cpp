// The dkd_loss CUDA kernels and host code, built by the host compiler to run under the emulator
// (csrc/cuda/runtime.h picks it when not under nvcc; reached through sk.backend("emulated")).
#include "cuda/dkd_loss.cu"
