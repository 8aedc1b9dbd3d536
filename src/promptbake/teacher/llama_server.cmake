# Builds llama.cpp's llama-server against the llama.cpp libraries that llama-cpp-python installed
# (libllama, libggml*, libllama-common, libmtmd, with their headers and CMake config), so only the
# server's own sources are compiled. promptbake/teacher/engine.py copies this file into a build
# folder as CMakeLists.txt and passes LLAMA_SRC (the llama.cpp tree of the same llama-cpp-python
# version's sdist: the headers must match the libraries) and CMAKE_PREFIX_PATH (where the
# libraries are). The settings mirror tools/server/CMakeLists.txt and vendor/cpp-httplib's.
cmake_minimum_required(VERSION 3.21)
project(promptbake_llama_server C CXX)

set(CMAKE_CXX_STANDARD 17)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(CMAKE_POSITION_INDEPENDENT_CODE ON)
if(NOT CMAKE_BUILD_TYPE)
    set(CMAKE_BUILD_TYPE Release)
endif()

set(LLAMA_SRC "" CACHE PATH "llama.cpp tree of the sdist the installed llama-cpp-python was built from")
find_package(Threads REQUIRED)
find_package(llama REQUIRED)
find_library(LLAMA_COMMON_LIB llama-common HINTS ${LLAMA_LIB_DIR} REQUIRED NO_DEFAULT_PATH)
find_library(MTMD_LIB mtmd HINTS ${LLAMA_LIB_DIR} REQUIRED NO_DEFAULT_PATH)

add_library(cpp-httplib STATIC ${LLAMA_SRC}/vendor/cpp-httplib/httplib.cpp)
target_include_directories(cpp-httplib PUBLIC ${LLAMA_SRC}/vendor)
target_compile_options(cpp-httplib PRIVATE -w)
target_compile_definitions(cpp-httplib PRIVATE
    CPPHTTPLIB_FORM_URL_ENCODED_PAYLOAD_MAX_LENGTH=1048576
    CPPHTTPLIB_LISTEN_BACKLOG=512
    CPPHTTPLIB_REQUEST_URI_MAX_LENGTH=32768
    CPPHTTPLIB_TCP_NODELAY=1)

# An empty web UI: the real one is downloaded from Hugging Face or built with npm, and the teacher
# needs only the API.
set(UI_DIR ${CMAKE_CURRENT_BINARY_DIR}/ui)
add_custom_command(
    OUTPUT ${UI_DIR}/ui.cpp ${UI_DIR}/ui.h
    COMMAND ${CMAKE_COMMAND} -DUI_SOURCE_DIR=${LLAMA_SRC}/tools/ui -DUI_BINARY_DIR=${UI_DIR}
            -DLLAMA_SOURCE_DIR=${LLAMA_SRC} -DHF_ENABLED=OFF -DBUILD_UI=OFF -DLLAMA_UI_GZIP=OFF
            -P ${LLAMA_SRC}/scripts/ui-assets.cmake
    VERBATIM)
add_library(llama-ui STATIC ${UI_DIR}/ui.cpp)
target_include_directories(llama-ui PUBLIC ${UI_DIR})

file(GLOB SERVER_SOURCES ${LLAMA_SRC}/tools/server/*.cpp)
add_executable(llama-server ${SERVER_SOURCES})
target_include_directories(llama-server PRIVATE
    ${LLAMA_SRC}/tools/server ${LLAMA_SRC}/tools/mtmd ${LLAMA_SRC}/common ${LLAMA_SRC}/vendor ${LLAMA_SRC})
# llama-common was built with LLAMA_SUBPROCESS (llama.cpp's default on Linux): its headers must agree.
target_compile_definitions(llama-server PRIVATE LLAMA_SUBPROCESS)
target_link_libraries(llama-server PRIVATE cpp-httplib llama-ui ${LLAMA_COMMON_LIB} ${MTMD_LIB} llama Threads::Threads)
set_target_properties(llama-server PROPERTIES BUILD_RPATH ${LLAMA_LIB_DIR} INSTALL_RPATH ${LLAMA_LIB_DIR})
