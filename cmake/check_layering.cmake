# Checks the dependency direction of DESIGN.md section 1 on the sources under ROOT:
#   cmake -DROOT=<repo root> -P cmake/check_layering.cmake
# Fails listing every `#include "<folder>/..."` that points right along the chain or is forbidden.
cmake_minimum_required(VERSION 3.25)

if(NOT DEFINED ROOT)
  message(FATAL_ERROR "check_layering: pass the tree to check, e.g. cmake -DROOT=. -P ${CMAKE_CURRENT_LIST_FILE}")
endif()
get_filename_component(ROOT "${ROOT}" ABSOLUTE)
if(NOT IS_DIRECTORY "${ROOT}")
  message(FATAL_ERROR "check_layering: ROOT=${ROOT} is not a directory")
endif()

set(chain_text "kernels <- autograd <- layers <- {optim, data} <- distributed <- train <- {eval, interop} <- cli; configs is a leaf that anything above kernels may read")

# Rank of each library folder along the chain; a folder may include only folders of lower rank.
set(rank_kernels 0)
set(rank_autograd 1)
set(rank_layers 2)
set(rank_optim 3)
set(rank_data 3)
set(rank_distributed 4)
set(rank_train 5)
set(rank_eval 6)
set(rank_interop 6)
set(rank_cli 7)
set(chain_folders kernels autograd layers optim data distributed train eval interop cli)
set(scanned_folders ${chain_folders} configs)
# Folders no library code may include at all.
set(outside_folders tests bench)

# Sets ${out} to "" when folder `from` may include folder `to`, else to the reason it may not.
function(layering_verdict from to out)
  set(reason "")
  if(from STREQUAL to)
    # a folder includes itself freely
  elseif(to IN_LIST outside_folders)
    set(reason "${from} may not depend on ${to} (library code never includes ${to}/)")
  elseif(from STREQUAL "configs")
    set(reason "configs may not depend on ${to} (configs is a leaf and includes no project folder)")
  elseif(to STREQUAL "configs")
    if(rank_${from} LESS 1)
      set(reason "${from} may not depend on configs (only folders above kernels read configs)")
    endif()
  elseif(rank_${to} GREATER rank_${from})
    set(reason "${from} may not depend on ${to}")
  elseif(rank_${to} EQUAL rank_${from})
    set(reason "${from} and ${to} may not depend on each other")
  endif()
  set(${out} "${reason}" PARENT_SCOPE)
endfunction()

set(include_regex "^[ \t]*#[ \t]*include[ \t]*[\"<]([A-Za-z0-9_]+)/([^\">]*)[\">]")
set(violations "")
set(violation_count 0)
set(file_count 0)

foreach(folder IN LISTS scanned_folders)
  if(NOT IS_DIRECTORY "${ROOT}/${folder}")
    continue()
  endif()
  file(GLOB_RECURSE sources LIST_DIRECTORIES false
       "${ROOT}/${folder}/*.h" "${ROOT}/${folder}/*.cuh"
       "${ROOT}/${folder}/*.cpp" "${ROOT}/${folder}/*.cu")
  list(SORT sources)
  foreach(source IN LISTS sources)
    math(EXPR file_count "${file_count} + 1")
    file(RELATIVE_PATH rel "${ROOT}" "${source}")
    file(READ "${source}" text)
    # Split into lines without CMake's list syntax getting in the way: characters that list
    # handling treats specially are masked first (the include paths we match never hold them).
    string(REPLACE "\\" "/" text "${text}")
    string(REPLACE ";" ":" text "${text}")
    string(REPLACE "[" "(" text "${text}")
    string(REPLACE "]" ")" text "${text}")
    string(REPLACE "\n" ";" lines "${text}")
    set(line_number 0)
    foreach(line IN LISTS lines)
      math(EXPR line_number "${line_number} + 1")
      if(NOT line MATCHES "${include_regex}")
        continue()
      endif()
      set(target_folder "${CMAKE_MATCH_1}")
      set(included "${CMAKE_MATCH_1}/${CMAKE_MATCH_2}")
      if(NOT target_folder IN_LIST scanned_folders AND NOT target_folder IN_LIST outside_folders)
        continue()  # a system or third-party header such as <CLI/CLI.hpp>
      endif()
      layering_verdict("${folder}" "${target_folder}" reason)
      if(reason)
        string(APPEND violations "  ${rel}:${line_number} includes ${included}: ${reason} (chain: ${chain_text})\n")
        math(EXPR violation_count "${violation_count} + 1")
      endif()
    endforeach()
  endforeach()
endforeach()

if(violation_count GREATER 0)
  message(FATAL_ERROR "check_layering: ${violation_count} include(s) against the dependency direction "
                      "in ${ROOT}:\n${violations}"
                      "Move the code down the chain, or pass what it needs in from above.")
endif()
message(STATUS "check_layering: ${file_count} files under ${ROOT} follow the dependency direction")
