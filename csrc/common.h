// Definitions shared by the C++ CPU and CUDA sources.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SK_HOST_DEVICE __host__ __device__
#else
#define SK_HOST_DEVICE
#endif
