// LD_PRELOAD shim that forces the interleaving of issue 26, without changing torch or the training code.
// Written against torch 2.14's libtorch_cpu (x86-64, libstdc++); see README.md here.
// 1. ProcessGroupGloo::runLoop calls c10d::opTypeToString through the PLT right after AsyncWork::execute
//    returned (the collective is complete and its caller woken) and before the worker drops its
//    reference to the work. Interposing it, each gloo worker is held there until released (or for
//    GLOO_HOLD_US, default 3 s), as if the scheduler had preempted it.
// 2. wv_release_and_hold_gil(us), called through ctypes.PyDLL (the GIL stays held) from the last atexit
//    handler, releases the held workers and spins `us` microseconds: a worker that now frees a
//    Python-owned tensor passes torch's Py_IsInitialized() check and blocks on the GIL, which the main
//    thread then keeps into interpreter finalisation -- the window the race needs.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <pthread.h>
#include <string>
#include <unistd.h>

static std::atomic<bool> released{false};

extern "C" void wv_release_and_hold_gil(long us) {
  released = true;
  auto end = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  while (std::chrono::steady_clock::now() < end) {
  }
}

namespace c10d {
enum class OpType : std::uint8_t;
std::string opTypeToString(OpType t) {
  using Fn = std::string (*)(OpType);
  // libtorch_cpu is dlopen-ed locally by torch, so look the real function up in it by handle
  static Fn real = reinterpret_cast<Fn>(
      dlsym(dlopen("libtorch_cpu.so", RTLD_NOLOAD | RTLD_LAZY), "_ZN4c10d14opTypeToStringB5cxx11ENS_6OpTypeE"));
  if (real == nullptr) std::abort();
  char name[16] = {0};
  pthread_getname_np(pthread_self(), name, sizeof name);
  if (std::strcmp(name, "pt_gloo_runloop") == 0) {
    static long hold = [] { const char* s = std::getenv("GLOO_HOLD_US"); return s ? std::atol(s) : 3000000L; }();
    auto end = std::chrono::steady_clock::now() + std::chrono::microseconds(hold);
    while (!released && std::chrono::steady_clock::now() < end) usleep(1000);
  }
  return real(t);
}
}  // namespace c10d
