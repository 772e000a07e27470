# Defines safetensors::libtorch, an imported interface target for the
# LibTorch under a prefix (a pip torch package directory or an unpacked
# libtorch). Used by the build and installed for consumers, so that only the
# headers, the libraries and the ABI define LibTorch needs travel -- none of
# TorchConfig's global flags or its protobuf/MKL lookups.
function(st_torch_import prefix cxx11_abi)
  if(TARGET safetensors::libtorch)
    return()
  endif()
  set(libs)
  foreach(name torch torch_cpu c10)
    find_library(ST_TORCH_LIB_${name} ${name} PATHS "${prefix}/lib" NO_DEFAULT_PATH)
    if(NOT ST_TORCH_LIB_${name})
      message(FATAL_ERROR "safetensors: lib${name} not found under ${prefix}/lib")
    endif()
    list(APPEND libs "${ST_TORCH_LIB_${name}}")
  endforeach()
  add_library(safetensors::libtorch INTERFACE IMPORTED)
  set_target_properties(safetensors::libtorch PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES
      "${prefix}/include;${prefix}/include/torch/csrc/api/include"
    INTERFACE_LINK_LIBRARIES "${libs}"
    INTERFACE_COMPILE_DEFINITIONS "_GLIBCXX_USE_CXX11_ABI=${cxx11_abi}"
    INTERFACE_COMPILE_FEATURES cxx_std_20)
endfunction()

# Finds the LibTorch prefix and ABI the ways LibTorch itself is found: an
# explicit prefix wins, then Torch_DIR (<prefix>/share/cmake/Torch, set by
# -DTorch_DIR or an earlier find_package(Torch)), then TorchConfig.cmake under
# CMAKE_PREFIX_PATH (a libtorch directory, or a pip torch's
# torch.utils.cmake_prefix_path), then `import torch` with the given Python.
# Sets <out_prefix> and <out_abi> in the caller; prefix empty when not found.
function(st_torch_locate explicit_prefix python out_prefix out_abi)
  set(prefix "${explicit_prefix}")
  if(NOT prefix AND Torch_DIR)
    get_filename_component(prefix "${Torch_DIR}/../../.." ABSOLUTE)
  endif()
  if(NOT prefix)
    set(roots ${CMAKE_PREFIX_PATH})
    if(DEFINED ENV{CMAKE_PREFIX_PATH})
      string(REPLACE ":" ";" env_roots "$ENV{CMAKE_PREFIX_PATH}")
      list(APPEND roots ${env_roots})
    endif()
    foreach(root IN LISTS roots)
      foreach(sub Torch share/cmake/Torch)
        if(NOT prefix AND EXISTS "${root}/${sub}/TorchConfig.cmake")
          get_filename_component(prefix "${root}/${sub}/../../.." ABSOLUTE)
        endif()
      endforeach()
    endforeach()
  endif()
  set(abi "")
  if(python AND EXISTS "${python}")
    execute_process(
      COMMAND "${python}" -c
        "import os, torch; print(os.path.dirname(torch.__file__)); print(int(torch.compiled_with_cxx11_abi()))"
      OUTPUT_VARIABLE out RESULT_VARIABLE rc ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(rc EQUAL 0)
      string(REPLACE "\n" ";" out "${out}")
      list(GET out 0 py_prefix)
      list(GET out 1 abi)
      if(NOT prefix)
        set(prefix "${py_prefix}")
      endif()
    endif()
  endif()
  if(abi STREQUAL "")
    set(abi 1)  # every LibTorch since 2.7 uses the C++11 ABI
  endif()
  if(prefix AND NOT EXISTS "${prefix}/include/ATen/core/Tensor.h")
    set(prefix "")
  endif()
  set(${out_prefix} "${prefix}" PARENT_SCOPE)
  set(${out_abi} "${abi}" PARENT_SCOPE)
endfunction()
