# Third-party packages, all from the distribution (scripts/install-deps.sh installs them).
find_package(Threads REQUIRED)
find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(PkgConfig REQUIRED)
pkg_check_modules(OPENBLAS REQUIRED IMPORTED_TARGET openblas)
find_package(fmt REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(CLI11 REQUIRED)
find_package(yaml-cpp REQUIRED)
find_package(HDF5 REQUIRED COMPONENTS C)
pkg_check_modules(SENTENCEPIECE REQUIRED IMPORTED_TARGET sentencepiece)
find_package(MPI COMPONENTS CXX)

if(SSMTRAIN_BUILD_TESTS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
endif()

# ccache for C++ and CUDA when present (scripts/test.sh installs it).
find_program(SSMTRAIN_CCACHE ccache)
if(SSMTRAIN_CCACHE)
  set(CMAKE_CXX_COMPILER_LAUNCHER "${SSMTRAIN_CCACHE}")
  set(CMAKE_CUDA_COMPILER_LAUNCHER "${SSMTRAIN_CCACHE}")
endif()
