# NCCL, the GPU collectives of distributed.backend: nccl. Looked for only in a CUDA build:
# nccl.h and libnccl beside the toolkit's (CUDA 13 packages ship them there), in the system
# paths (libnccl-dev), under SSMTRAIN_NCCL_ROOT or $NCCL_ROOT. Optional: without it the build
# has no nccl backend and `distributed.backend: nccl` says so before a run starts; with
# -DSSMTRAIN_NCCL=ON a missing NCCL is a configure error. Exposed as ssmtrain::nccl and
# SSMTRAIN_WITH_NCCL.
set(SSMTRAIN_NCCL "AUTO" CACHE STRING "Build the NCCL backend: AUTO (when found), ON (required), OFF")
set_property(CACHE SSMTRAIN_NCCL PROPERTY STRINGS AUTO ON OFF)
set(SSMTRAIN_NCCL_ROOT "" CACHE PATH "NCCL install prefix (include/, lib/) when not found by default")
set(SSMTRAIN_WITH_NCCL OFF)
if(NOT SSMTRAIN_WITH_CUDA OR SSMTRAIN_NCCL STREQUAL "OFF")
  return()
endif()
set(nccl_hints ${SSMTRAIN_NCCL_ROOT} $ENV{NCCL_ROOT} ${CUDAToolkit_LIBRARY_ROOT})
find_path(SSMTRAIN_NCCL_INCLUDE_DIR nccl.h
  HINTS ${nccl_hints} ${CUDAToolkit_INCLUDE_DIRS} PATH_SUFFIXES include)
find_library(SSMTRAIN_NCCL_LIBRARY NAMES nccl libnccl.so.2
  HINTS ${nccl_hints} ${CUDAToolkit_LIBRARY_DIR} PATH_SUFFIXES lib lib64)
if(NOT SSMTRAIN_NCCL_INCLUDE_DIR OR NOT SSMTRAIN_NCCL_LIBRARY)
  if(SSMTRAIN_NCCL STREQUAL "ON")
    message(FATAL_ERROR "SSMTRAIN_NCCL=ON but NCCL was not found (nccl.h, libnccl): install libnccl-dev "
                        "(scripts/install-deps.sh) or pass -DSSMTRAIN_NCCL_ROOT=PREFIX")
  endif()
  message(STATUS "ssmtrain: NCCL not found: no nccl backend (install libnccl-dev for multi-GPU training)")
  return()
endif()
if(NOT TARGET ssmtrain::nccl)
  add_library(ssmtrain::nccl UNKNOWN IMPORTED)
  set_target_properties(ssmtrain::nccl PROPERTIES
    IMPORTED_LOCATION "${SSMTRAIN_NCCL_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${SSMTRAIN_NCCL_INCLUDE_DIR}")
endif()
set(SSMTRAIN_WITH_NCCL ON)
message(STATUS "ssmtrain: NCCL ${SSMTRAIN_NCCL_LIBRARY} (headers in ${SSMTRAIN_NCCL_INCLUDE_DIR})")
