# Decides whether the CUDA kernels are built (SSMTRAIN_CUDA=AUTO|ON|OFF) and for which
# architectures: Hopper machine code (sm_90) plus compute_80 PTX that newer and older
# Ampere-or-later GPUs compile at load time. Override with -DCMAKE_CUDA_ARCHITECTURES=...
set(SSMTRAIN_WITH_CUDA OFF)
if(SSMTRAIN_CUDA STREQUAL "OFF")
  return()
endif()

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  if(SSMTRAIN_CUDA STREQUAL "ON")
    message(FATAL_ERROR "SSMTRAIN_CUDA=ON but no CUDA compiler (nvcc) was found; "
                        "put nvcc on PATH or set CMAKE_CUDA_COMPILER")
  endif()
  message(STATUS "ssmtrain: nvcc not found, building CPU only")
  return()
endif()

if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES "90-real;80-virtual")
endif()
# CMake < 3.26 does not know nvcc's C++20 flag: enable the language at C++17 (the compiler
# test), then teach CMake the flag and ask for C++20.
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
set(CMAKE_CUDA_EXTENSIONS OFF)
enable_language(CUDA)
if(NOT DEFINED CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
  set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
  set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
endif()
set(CMAKE_CUDA_STANDARD 20)
find_package(CUDAToolkit REQUIRED)
set(SSMTRAIN_WITH_CUDA ON)

# cuDNN 9 (fused attention through its graph API): header and library beside the toolkit's,
# in the system paths, under SSMTRAIN_CUDNN_ROOT, or from the nvidia-cudnn Python wheel that
# PyTorch installs (whose library is only libcudnn.so.9). Exposed as ssmtrain::cudnn.
set(SSMTRAIN_CUDNN_ROOT "" CACHE PATH "cuDNN 9 install prefix (include/, lib/) when not found by default")
set(cudnn_hints ${SSMTRAIN_CUDNN_ROOT} $ENV{CUDNN_ROOT} ${CUDAToolkit_LIBRARY_ROOT})
find_program(SSMTRAIN_PYTHON3 python3)
if(SSMTRAIN_PYTHON3)
  execute_process(
    COMMAND ${SSMTRAIN_PYTHON3} -c "import nvidia.cudnn, os; print(list(nvidia.cudnn.__path__)[0])"
    OUTPUT_VARIABLE cudnn_wheel OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(cudnn_wheel)
    list(APPEND cudnn_hints ${cudnn_wheel})
  endif()
endif()
find_path(SSMTRAIN_CUDNN_INCLUDE_DIR cudnn_graph.h
  HINTS ${cudnn_hints} ${CUDAToolkit_INCLUDE_DIRS} PATH_SUFFIXES include)
find_library(SSMTRAIN_CUDNN_LIBRARY NAMES cudnn libcudnn.so.9
  HINTS ${cudnn_hints} ${CUDAToolkit_LIBRARY_DIR} PATH_SUFFIXES lib lib64)
if(NOT SSMTRAIN_CUDNN_INCLUDE_DIR OR NOT SSMTRAIN_CUDNN_LIBRARY)
  message(FATAL_ERROR "cuDNN 9 not found (cudnn_graph.h, libcudnn): install it "
                      "(Debian/Ubuntu: cudnn9-cuda-13 from NVIDIA's repository, or pip's "
                      "nvidia-cudnn-cu13) or pass -DSSMTRAIN_CUDNN_ROOT=PREFIX")
endif()
add_library(ssmtrain::cudnn UNKNOWN IMPORTED)
set_target_properties(ssmtrain::cudnn PROPERTIES
  IMPORTED_LOCATION "${SSMTRAIN_CUDNN_LIBRARY}"
  INTERFACE_INCLUDE_DIRECTORIES "${SSMTRAIN_CUDNN_INCLUDE_DIR}")
message(STATUS "ssmtrain: cuDNN ${SSMTRAIN_CUDNN_LIBRARY} (headers in ${SSMTRAIN_CUDNN_INCLUDE_DIR})")
