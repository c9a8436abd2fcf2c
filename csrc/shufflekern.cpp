// Operator schemas (defined once, here) and the Python module shufflekern._C.
//
// Every op is declared twice with one schema: shufflekern::<op>, the compiled kernels (csrc/cpu/<op>.cpp for
// CPU, csrc/cuda/<op>.cu for CUDA; the same .cu built by the host compiler, csrc/emu/<op>.cpp, fills the
// emulated backend's op table), and its Triton twin shufflekern::<op>_triton, whose CPU and CUDA kernels are
// the Python launchers of shufflekern/triton/<op>.py (registered in shufflekern/ops.py).  One C++ autograd
// kernel per op serves both families (csrc/autograd/<op>.cpp): the backward of a twin calls the twin's
// backward ops.  Fake kernels: shufflekern/ops.py.  Exact semantics: docs/semantics.md.
#include <torch/extension.h>
#include <torch/library.h>

#include <string>

#include "cpu/dispatch.h"
#include "emu/registry.h"

namespace {

// shufflekern::<name><rest> and shufflekern::<name>_triton<rest>.
void def_family(torch::Library& m, const std::string& name, const std::string& rest) {
  for (const char* family : {"", "_triton"}) m.def((name + family + rest).c_str());
}

}  // namespace

TORCH_LIBRARY(shufflekern, m) {
  // channel_shuffle: torch.channel_shuffle(x, groups) for 4-D x in either memory format.
  def_family(m, "channel_shuffle", "(Tensor x, int groups) -> Tensor");

  // shuffle_conv1x1: conv2d(channel_shuffle(x, shuffle_groups), weight, bias, groups=groups) with a
  // [C_out, C_in/groups, 1, 1] weight; output in x's memory format.  The backward ops give grad of x (in
  // grad_out's memory format) and of the weight; grad of the bias is grad_out.sum((0, 2, 3)).
  def_family(m, "shuffle_conv1x1", "(Tensor x, Tensor weight, Tensor? bias, int groups, int shuffle_groups) -> Tensor");
  def_family(m, "shuffle_conv1x1_grad_input", "(Tensor grad_out, Tensor weight, int groups, int shuffle_groups) -> Tensor");
  def_family(m, "shuffle_conv1x1_grad_weight", "(Tensor grad_out, Tensor x, int groups, int shuffle_groups) -> Tensor");
  // shuffle_conv1x1_backward: what the autograd calls, like aten::convolution_backward: (grad_x in x's memory
  // format, grad_weight, grad_bias) in one op, so a kernel family can compute them in one pass over grad_out;
  // output_mask says which (the others are 0-element tensors).
  def_family(m, "shuffle_conv1x1_backward",
             "(Tensor grad_out, Tensor x, Tensor weight, int groups, int shuffle_groups, bool[3] output_mask) "
             "-> (Tensor, Tensor, Tensor)");

  // kd_loss_forward: one op for sk.kd_kl_div (alpha = 1, no target) and sk.kd_loss.  Returns the loss and,
  // when asked, the gradients of the loss w.r.t. the logits (computed in the same pass; 0-element tensors
  // when not asked), which the autograd formula scales by grad_output.
  // reduction: 0 none, 1 mean, 2 sum, 3 batchmean.
  def_family(m, "kd_loss_forward",
             "(Tensor student, Tensor teacher, Tensor? target, float temperature, float alpha, int ignore_index, "
             "int reduction, bool grad_student, bool grad_teacher) -> (Tensor, Tensor, Tensor)");

  // --- dkd_loss (begin) ---
  // dkd_loss_forward: sk.dkd_loss, Decoupled KD (alpha TCKD + beta NCKD, mdistiller's dkd_loss); like
  // kd_loss_forward, the loss and, when asked, its gradients w.r.t. the logits from the same pass.
  def_family(m, "dkd_loss_forward",
             "(Tensor student, Tensor teacher, Tensor target, float temperature, float alpha, float beta, "
             "int ignore_index, int reduction, bool grad_student, bool grad_teacher) -> (Tensor, Tensor, Tensor)");
  // --- dkd_loss (end) ---

  // batch_norm_act (the fused models' BatchNorm [+ residual] + ReLU): y = relu(batch_norm(x) [+ residual])
  // (relu=False: no ReLU) in one op; training=True normalises with the batch statistics, training=False with
  // running_mean and running_var.  Returns y and, in training, the batch mean and biased variance (the caller
  // updates the running statistics; 0-element tensors in evaluation).  The backward returns the gradients of
  // x, residual, weight, bias (output_mask says which; the others are 0-element tensors).  Which dtypes each
  // backend takes: shufflekern/_backend.py.
  def_family(m, "batch_norm_act",
             "(Tensor x, Tensor? weight, Tensor? bias, Tensor? residual, Tensor? running_mean, Tensor? running_var, "
             "bool training, float eps, bool relu) -> (Tensor, Tensor, Tensor)");
  def_family(m, "batch_norm_act_backward",
             "(Tensor grad_y, Tensor x, Tensor? weight, Tensor? bias, Tensor? residual, Tensor mean, Tensor var, "
             "bool training, float eps, bool relu, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");

  // ---- at_loss (issue 14) ----
  // at_loss: attention transfer (RepDistiller, p = 2): loss = mean((a_s - a_t)^2), a = F.normalize(f.pow(2)
  // .mean(1).view(N, -1)).  Returns the 0-dim loss (the maps' dtype) and q = f.pow(2).mean(1) of each map as
  // [N, H*W] in the accumulation type (float64 for float64, else float32), what the backward reads.  The
  // backward returns the gradients of f_student and f_teacher (each in its map's memory format; output_mask
  // says which, the others are 0-element tensors).  Maths: csrc/at_loss.h.
  def_family(m, "at_loss", "(Tensor f_student, Tensor f_teacher) -> (Tensor, Tensor, Tensor)");
  def_family(m, "at_loss_backward",
             "(Tensor grad, Tensor f_student, Tensor f_teacher, Tensor q_student, Tensor q_teacher, "
             "bool[2] output_mask) -> (Tensor, Tensor)");
  // ---- end at_loss ----
  // ---- whole-unit inference kernels (branch h-units; csrc/unit.h, csrc/cpu/unit_ops.cpp) ----------------------
  // One op a ShuffleNet unit, eval mode, BatchNorm folded, weights prepacked (shufflekern/models/_units.py);
  // CPU float32/float64 only, no autograd (the fused models use them only when no gradient is needed).
  // unit_v2: V2 unit (stride 1: split + branch2 + interleave; stride 2: branch1 (wd1, bd1, wp1, bp1) and branch2).
  // unit_v1: V1 unit (grouped 1x1 + ReLU, shuffle, dw 3x3, grouped 1x1, + residual + ReLU or avg-pool concat).
  m.def("unit_v2(Tensor x, Tensor w1, Tensor b1, Tensor wd, Tensor bd, Tensor w2, Tensor b2, Tensor? wd1, "
        "Tensor? bd1, Tensor? wp1, Tensor? bp1, int stride) -> Tensor");
  m.def("unit_v1(Tensor x, Tensor w1, Tensor b1, Tensor wd, Tensor bd, Tensor w3, Tensor b3, int groups1, "
        "int groups3, int stride) -> Tensor");
  // max_pool3x3s2: F.max_pool2d(x, 3, 2, 1) without indices (ShuffleNet's stem pool), CPU float32/float64, no
  // autograd: the fused models' stem at inference (csrc/cpu/max_pool.cpp).
  m.def("max_pool3x3s2(Tensor x) -> Tensor");
  // bn_relu_max_pool: y = max_pool2d(relu(batch_norm(x)), 3, 2, 1) (ShuffleNet's stem after its conv) with
  // a uint8 argmax (window position 3 * ky + kx, what the backward reads) and, in training, the batch mean
  // and biased variance (as batch_norm_act: the caller updates the running statistics).  CPU float32/float64
  // (csrc/cpu/batch_norm_act.cpp), C++ autograd; the fused models' stem on CPU outside torch.compile.
  m.def("bn_relu_max_pool(Tensor x, Tensor? weight, Tensor? bias, Tensor? running_mean, Tensor? running_var, "
        "bool training, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("bn_relu_max_pool_backward(Tensor grad_y, Tensor x, Tensor argmax, Tensor? weight, Tensor? bias, "
        "Tensor mean, Tensor var, bool training, float eps, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // interleave: the fused V2 unit's concat + shuffle into `parts` channel blocks, part k =
  // channel_shuffle(cat(a[:, kq:(k+1)q], b[:, kq:(k+1)q]), 2); deinterleave: its inverse (each the other's
  // backward).  CPU, any dtype (csrc/cpu/interleave.cpp); the fused unit's training path on CPU.
  m.def("interleave(Tensor a, Tensor b, int parts) -> Tensor[]");
  m.def("deinterleave(Tensor[] ys) -> (Tensor, Tensor)");
  // ---- end whole-unit kernels ------------------------------------------------------------------------------
}

namespace {

std::string cuda_archs() {
#ifdef SK_CUDA_ARCHS
  return SK_CUDA_ARCHS;
#else
  return "";
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "shufflekern compiled kernels (ops are registered as torch.ops.shufflekern.*)";
  m.def("compiled_cpu_isas", &shufflekern::cpu::compiled_isas,
        "CPU ISA variants compiled into this build");
  m.def("runtime_cpu_isa", [] { return std::string(shufflekern::cpu::isa_name(shufflekern::cpu::runtime_isa())); },
        "CPU ISA variant the kernels dispatch to on this machine");
  m.def("cuda_archs", &cuda_archs, "CUDA architectures the CUDA kernels were compiled for ('' if none)");
  m.def("emu_set_enabled", &shufflekern::emurt::set_enabled,
        "Route CPU-tensor calls of the ops with CUDA kernels through the emulator (sk.backend('emulated'))");
  m.def("emu_enabled", &shufflekern::emurt::enabled, "Whether the emulated backend is on");
  m.def(
      "emu_ops",
      [] {
        std::vector<std::string> names;
        for (const auto& kv : shufflekern::emurt::op_table()) names.push_back(kv.first);
        return names;
      },
      "Names of the ops with emulated (CUDA) kernels");
  m.def("emu_launches", &shufflekern::emurt::launch_counts, "{kernel name: emulated launches so far}");
  m.def("emu_set_traffic", &shufflekern::emurt::set_traffic, pybind11::arg("on"), pybind11::arg("sample_blocks") = 0,
        "Record the modeled memory traffic of every emulated launch (sample_blocks > 0: run that many blocks)");
  m.def("emu_traffic_log", &shufflekern::emurt::traffic_log,
        "The traffic recorded since the last call: one dict of strings a launch");
  m.attr("with_cuda") =
#ifdef SK_WITH_CUDA
      true;
#else
      false;
#endif
}
