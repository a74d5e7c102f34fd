// Runs the kernels of aten/src/ATen/native/cuda/FusedCrossEntropy.cu (taken
// from the series by patches.cuda_emulation) on the CPU under prelude.h's
// emulation of the CUDA execution model, with the launch configurations the
// host code computes, and compares every output with a float64 reference:
// log-sum-exp, per-position and reduced loss, input and target gradients,
// exact zeros at ignored positions.  The cases cover both layouts (sub-warp
// rows, block-per-row rows, K-dim strided), misaligned rows (vector head and
// tail), mismatched target alignment (scalar path), every reduction, weight,
// label smoothing, ignore_index, -inf logits with zero targets, and four dtypes;
// the grid cap is lowered (see __main__.py) so grid-stride loops run too.
//
// Large logits (an offset of 30, 60 or 1000 on every logit) and confident rows
// (one class 20..40 above the rest, the target or another) are graded
// strictly, element by element, against first-order rounding-error bounds
// (see Bounds): these are the inputs where a log-sum-exp saved in the input's
// precision loses digits that every softmax term of the backward inherits.
#include "prelude.h"

namespace at::native {
namespace {
#include "kernels.inc"
} // namespace
} // namespace at::native

#include <c10/util/BFloat16-math.h>

#include <cstdio>
#include <random>
#include <string>

using namespace at::native;

struct Case {
  std::string name;
  int64_t outer, classes, inner;
  bool prob, weight;
  double smoothing;
  int reduction;  // 0 none, 1 mean, 2 sum
  int misalign;   // elements added to every buffer's start
  bool target_misaligned;  // probability target shifted against the input
  bool ignored;   // some class-index targets equal ignore_index
  bool neg_inf;   // -inf logits where the probability target is 0 (no smoothing)
  double offset = 0;       // added to every logit
  bool confident = false;  // one class per position raised 20..40 above the rest
  bool hit = true;         // confident: the raised class is the target (class indices)

  bool strict() const { return offset != 0 || confident; }
};

// Error bounds of the strict cases, first order in the unit roundoffs u (of
// the accumulation type, of the saved log-sum-exp, of the output).  With
// p_c = exp(x_c - lse), m the row maximum, A = sum_c a_c the total loss
// coefficient and n = C + 4 a generous count of sequential roundings:
//  * lse: every term exp(x_c - m) carries (|x_c - m| + 4) u relative error
//    (argument rounding, exp within 2 ulp) and the sum n u more, so log(sum)
//    is off by at most u (S1 + n) with S1 = sum_c p_c |x_c - m|; the saved
//    value adds its own rounding u_lse |lse|.
//  * grad_input g (A p_c - a_c): p_c inherits the lse error plus the
//    rounding of its argument, 2 u |x_c - lse| (x - hi, then - lo), and
//    exp's, A (summed over the classes) n u, g and the products a few u.
//  * grad_target g (1 - eps) w_c (lse - x_c): the lse error plus a few
//    roundings of |lse - x_c|.
//  * loss: A times the log(sum) error, n u of the accumulated
//    sum_c a_c (x_c - m) and A log(sum), a few u of the result.
// Every bound also allows the rounding of the stored value: u_out |ref|, or
// half a subnormal step (out_step) where the output type's subnormals hold
// it (Half gradients of a few 1e-6).
// A float lse of a row with logits near 1000 is off by up to 2^-15 ~ 512 u,
// far outside these bounds; float64 references are exact enough for float,
// Half and BFloat16 inputs (the strict cases use no double input).
struct Bounds {
  double u_acc, u_lse, u_out, out_step;
};

static int failures = 0;  // mismatching values
static int cases_passed = 0;
static int cases_failed = 0;

static void check_abs(const Case& cs, const char* what, double got, double ref, double bound) {
  const double err = std::abs(got - ref);
  const bool ok = (std::isnan(ref) && std::isnan(got)) || (std::isinf(ref) && got == ref) || err <= bound;
  if (!ok) {
    ++failures;
    if (failures < 40) {
      std::printf("MISMATCH %s %s: got %.12g ref %.12g (|err| %.3g > bound %.3g)\n", cs.name.c_str(), what, got,
                  ref, err, bound);
    }
  }
}

static void check(const Case& cs, const char* what, double got, double ref, double scale, double tol) {
  const double err = std::abs(got - ref) / std::max(scale, 1e-30);
  const bool ok = (std::isnan(ref) && std::isnan(got)) || (std::isinf(ref) && got == ref) || err <= tol;
  if (!ok) {
    ++failures;
    if (failures < 40) {
      std::printf("MISMATCH %s %s: got %.9g ref %.9g (err %.3g > %.3g)\n", cs.name.c_str(), what, got, ref, err, tol);
    }
  }
}

template <typename scalar_t, bool kProb>
void run(const Case& cs, double tol) {
  using acc_t = at::opmath_type<scalar_t>;
  using lse_t = lse_type<scalar_t>;
  // The bounds take the saved type from the contract, not from the kernel.
  using contract_lse_t = std::conditional_t<c10::is_reduced_floating_point_v<scalar_t>, float, double>;
  static_assert(std::is_same_v<lse_t, contract_lse_t>,
                "log_sum_exp must be saved as fused_cross_entropy_lse_dtype says");
  const Bounds u{std::numeric_limits<acc_t>::epsilon() / 2, std::numeric_limits<contract_lse_t>::epsilon() / 2,
                 static_cast<double>(std::numeric_limits<scalar_t>::epsilon()) / 2,
                 static_cast<double>(std::numeric_limits<scalar_t>::denorm_min()) / 2};
  constexpr int kVec = std::max<int>(1, 16 / sizeof(scalar_t));
  std::mt19937 rng(1234);
  std::normal_distribution<double> normal(0.0, 2.0);
  std::uniform_real_distribution<double> uniform(0.5, 1.5);
  const int64_t C = cs.classes, S = cs.inner, P = cs.outer * cs.inner, numel = P * C;
  const int64_t ignore_index = kProb ? -100 : 2;
  // 16 spare elements: room for the misalignment offsets below.
  std::vector<scalar_t> xb(numel + 16), tb(numel + 16), gib(numel + 16), gtb(numel + 16);
  const int m = cs.misalign;
  scalar_t* x = xb.data() + m;
  scalar_t* t = tb.data() + m + (cs.target_misaligned ? 1 : 0);
  scalar_t* gi = gib.data() + m;
  scalar_t* gt = gtb.data() + m + (cs.target_misaligned ? 1 : 0);
  std::vector<int64_t> y(P);
  std::vector<scalar_t> w(C);
  for (int64_t i = 0; i < numel; ++i) x[i] = static_cast<scalar_t>(normal(rng) + cs.offset);
  for (auto& v : w) v = static_cast<scalar_t>(uniform(rng));
  if (kProb) {
    for (int64_t p = 0; p < P; ++p) {
      const int64_t n = p / S, s = p % S;
      double total = 0;
      std::vector<double> raw(C);
      for (int64_t c = 0; c < C; ++c) total += raw[c] = std::exp(normal(rng));
      for (int64_t c = 0; c < C; ++c) {
        double v = raw[c] / total;
        if (cs.neg_inf && c % 3 == 0) {
          v = 0.0;
          x[n * C * S + c * S + s] = -std::numeric_limits<scalar_t>::infinity();
        }
        t[n * C * S + c * S + s] = static_cast<scalar_t>(v);
      }
    }
  } else {
    std::uniform_int_distribution<int64_t> cls(0, C - 1);
    // ignore_index (2) is a valid class too when C > 2: such targets are ignored.
    for (int64_t p = 0; p < P; ++p) y[p] = (cs.ignored && p % 4 == 1) ? ignore_index : cls(rng);
  }
  if (cs.confident) {
    std::mt19937 lift_rng(99);
    std::uniform_real_distribution<double> lift(20.0, 40.0);
    for (int64_t p = 0; p < P; ++p) {
      const int64_t target = kProb || y[p] == ignore_index ? p % C : y[p];
      const int64_t raised = cs.hit ? target : (target + 1) % C;
      scalar_t& v = x[(p / S) * C * S + raised * S + p % S];
      v = static_cast<scalar_t>(static_cast<double>(v) + lift(lift_rng));
    }
  }
  CrossEntropyArgs<scalar_t, acc_t> args{};
  args.input = x;
  args.target_index = kProb ? nullptr : y.data();
  args.target_prob = kProb ? t : nullptr;
  args.weight = cs.weight ? w.data() : nullptr;
  args.outer = cs.outer;
  args.classes = C;
  args.inner = S;
  args.ignore_index = ignore_index;
  args.smoothing = static_cast<acc_t>(cs.smoothing);
  args.spread = args.smoothing / static_cast<acc_t>(C);  // as make_args does

  // ---- reference in double
  const double eps = cs.smoothing;
  std::vector<double> ref_lse(P), ref_loss(P), ref_w(P), ref_A(P);
  // For the strict bounds: the row maximum, S1 = sum_c p_c |x_c - max| and
  // D = sum_c a_c |x_c - max| (see Bounds).
  std::vector<double> ref_max(P), ref_S1(P), ref_D(P);
  auto X = [&](int64_t p, int64_t c) { return static_cast<double>(x[(p / S) * C * S + c * S + p % S]); };
  auto Tt = [&](int64_t p, int64_t c) { return static_cast<double>(t[(p / S) * C * S + c * S + p % S]); };
  auto W = [&](int64_t c) { return cs.weight ? static_cast<double>(w[c]) : 1.0; };
  double weight_total = 0;
  for (int64_t c = 0; c < C; ++c) weight_total += W(c);
  for (int64_t p = 0; p < P; ++p) {
    double mx = -INFINITY;
    for (int64_t c = 0; c < C; ++c) mx = std::max(mx, X(p, c));
    double sum = 0;
    for (int64_t c = 0; c < C; ++c) sum += std::exp(X(p, c) - mx);
    const double lse = mx + std::log(sum);
    ref_lse[p] = lse;
    ref_max[p] = mx;
    for (int64_t c = 0; c < C; ++c) {
      if (X(p, c) != -INFINITY) ref_S1[p] += std::exp(X(p, c) - lse) * std::abs(X(p, c) - mx);
    }
    double loss = 0, A = 0;
    if (kProb) {
      for (int64_t c = 0; c < C; ++c) {
        const double a = W(c) * ((1 - eps) * Tt(p, c) + eps / C);
        if (a != 0) {
          loss += a * (lse - X(p, c));
          ref_D[p] += a * std::abs(X(p, c) - mx);
        }
        A += a;
      }
      ref_w[p] = 1;
    } else if (y[p] == ignore_index) {
      ref_w[p] = 0;
    } else {
      const double wy = W(y[p]);
      loss = (1 - eps) * wy * (lse - X(p, y[p]));
      for (int64_t c = 0; c < C; ++c) {
        loss += eps / C * W(c) * (lse - X(p, c));
        ref_D[p] += eps / C * W(c) * std::abs(X(p, c) - mx);
      }
      ref_w[p] = wy;
      A = (1 - eps) * wy + eps / C * weight_total;
    }
    ref_loss[p] = loss;
    ref_A[p] = A;
  }
  double loss_total = 0, w_total = 0, loss_scale = 0;
  for (int64_t p = 0; p < P; ++p) {
    loss_total += ref_loss[p];
    w_total += ref_w[p];
    loss_scale = std::max(loss_scale, std::abs(ref_loss[p]));
  }
  const double denominator = kProb ? static_cast<double>(P) : w_total;

  // ---- forward, as launch_forward does
  const bool reduced = cs.reduction != 0;
  const bool vectorize = same_alignment(x, kProb ? t : nullptr);
  std::vector<lse_t> lse(P);
  std::vector<scalar_t> out(P);
  RowsLaunch rows{};
  const int64_t blocks = S == 1 ? (rows = rows_launch<acc_t>(cs.outer, C, kVec)).blocks : strided_blocks(P);
  std::vector<acc_t> partials(2 * blocks);
  acc_t* pl = reduced ? partials.data() : nullptr;
  acc_t* pw = reduced ? partials.data() + blocks : nullptr;
  scalar_t* per_position = reduced ? nullptr : out.data();
  if (S == 1) {
    emu_launch(blocks, rows.block_threads, [&] {
      cross_entropy_forward_rows_kernel<scalar_t, acc_t, kProb, kVec>(
          args, lse.data(), per_position, pl, pw, rows.group_size, vectorize);
    });
  } else {
    emu_launch(blocks, kStridedBlockThreads, [&] {
      cross_entropy_forward_strided_kernel<scalar_t, acc_t, kProb>(args, lse.data(), per_position, pl, pw);
    });
  }
  scalar_t reduced_out{};
  if (reduced) {
    emu_launch(1, kReduceThreads, [&] {
      cross_entropy_reduce_partials_kernel<scalar_t, acc_t>(
          pl, pw, blocks, cs.reduction == 1, kProb ? static_cast<acc_t>(P) : acc_t(0), &reduced_out);
    });
  }
  const double n_round = static_cast<double>(C) + 4;
  // Bound on the error of log(sum), and of the saved lse (see Bounds).
  auto log_sum_bound = [&](int64_t p) { return u.u_acc * (ref_S1[p] + n_round); };
  auto lse_bound = [&](int64_t p) { return log_sum_bound(p) + u.u_lse * std::abs(ref_lse[p]); };
  // The loss bound without the rounding of the stored value.
  auto loss_bound = [&](int64_t p) {
    const double log_sum = ref_lse[p] - ref_max[p];
    return ref_A[p] * log_sum_bound(p) + u.u_acc * n_round * (ref_D[p] + ref_A[p] * log_sum) +
        4 * u.u_acc * std::abs(ref_loss[p]);
  };
  double loss_bound_total = 0, loss_abs_total = 0;
  for (int64_t p = 0; p < P; ++p) {
    loss_bound_total += loss_bound(p);
    loss_abs_total += std::abs(ref_loss[p]);
  }
  for (int64_t p = 0; p < P; ++p) {
    if (cs.strict()) {
      check_abs(cs, "lse", lse[p], ref_lse[p], lse_bound(p));
      if (!reduced) {
        check_abs(cs, "loss", static_cast<double>(out[p]), ref_loss[p],
                  loss_bound(p) + u.u_out * std::abs(ref_loss[p]) + u.out_step);
      }
      continue;
    }
    check(cs, "lse", lse[p], ref_lse[p], std::max(1.0, std::abs(ref_lse[p])), tol);
    if (!reduced) check(cs, "loss", static_cast<double>(out[p]), ref_loss[p], std::max(1.0, loss_scale), tol);
  }
  // Sums of P terms add P + 8 roundings of the summed magnitudes.
  const double sum_bound = loss_bound_total + u.u_acc * (P + 8) * loss_abs_total;
  if (cs.reduction == 2) {
    if (cs.strict()) {
      check_abs(cs, "sum", static_cast<double>(reduced_out), loss_total, sum_bound + u.u_out * std::abs(loss_total) + u.out_step);
    } else {
      check(cs, "sum", static_cast<double>(reduced_out), loss_total, std::abs(loss_total) + 1, tol);
    }
  }
  if (cs.reduction == 1) {
    const double ref = denominator == 0 ? NAN : loss_total / denominator;
    if (cs.strict()) {
      // The divisor, a sum of P weights, is off by (P + 8) u relative.
      check_abs(cs, "mean", static_cast<double>(reduced_out), ref,
                sum_bound / denominator + (u.u_acc * (P + 8) + u.u_out) * std::abs(ref) + u.out_step);
    } else {
      check(cs, "mean", static_cast<double>(reduced_out), ref, std::abs(ref) + 1e-3, tol);
    }
  }

  // ---- backward, as launch_backward does
  std::normal_distribution<double> gdist(1.0, 0.5);
  std::vector<scalar_t> grad_out(reduced ? 1 : P);
  for (auto& g : grad_out) g = static_cast<scalar_t>(gdist(rng));
  GradScale<scalar_t, acc_t> scale{};
  scale.grad_output = grad_out.data();
  scale.per_position = !reduced;
  scale.divisor = acc_t(1);
  std::vector<acc_t> totals(2);
  if (cs.reduction == 1) {
    if (kProb) {
      scale.divisor = static_cast<acc_t>(P);
    } else {
      const int64_t wb = strided_blocks(P);
      std::vector<acc_t> partial_weight(wb);
      emu_launch(wb, kStridedBlockThreads, [&] {
        cross_entropy_target_weight_kernel<scalar_t, acc_t>(args, partial_weight.data());
      });
      emu_launch(1, kReduceThreads, [&] {
        cross_entropy_sum_kernel<acc_t, acc_t>(partial_weight.data(), wb, totals.data());
      });
      scale.total_weight = totals.data();
    }
  }
  if (!kProb && cs.weight && eps > 0) {
    emu_launch(1, kReduceThreads, [&] { cross_entropy_sum_kernel<scalar_t, acc_t>(w.data(), C, totals.data() + 1); });
    scale.weight_sum = totals.data() + 1;
  }
  const bool bvectorize = vectorize && same_alignment(x, gi) && same_alignment(x, kProb ? gt : nullptr);
  scalar_t* grad_target = kProb ? gt : nullptr;
  if (S == 1) {
    emu_launch(rows.blocks, rows.block_threads, [&] {
      cross_entropy_backward_rows_kernel<scalar_t, acc_t, kProb, kVec>(
          args, lse.data(), scale, gi, grad_target, rows.group_size, bvectorize);
    });
  } else {
    emu_launch(strided_blocks(P), kStridedBlockThreads, [&] {
      cross_entropy_backward_strided_kernel<scalar_t, acc_t, kProb>(args, lse.data(), scale, gi, grad_target);
    });
  }
  double grad_scale = 0, tgrad_scale = 0;
  std::vector<double> ref_gi(numel), ref_gt(numel);
  // Strict cases: per-element bounds (see Bounds).  g = grad_output / divisor
  // is off by one rounding, or by the (P + 8) u of a summed divisor (mean).
  std::vector<double> bound_gi(numel), bound_gt(numel);
  const double g_err = cs.reduction == 1 ? u.u_acc * (P + 8) : u.u_acc;
  const double tiny = std::numeric_limits<acc_t>::min();  // exp underflow
  for (int64_t p = 0; p < P; ++p) {
    double g = static_cast<double>(grad_out[reduced ? 0 : p]);
    if (cs.reduction == 1) g /= denominator;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = (p / S) * C * S + c * S + p % S;
      const double prob_c = std::exp(X(p, c) - ref_lse[p]);
      double a;
      if (kProb) {
        a = W(c) * ((1 - eps) * Tt(p, c) + eps / C);
        ref_gt[i] = std::isinf(X(p, c)) ? INFINITY : g * (1 - eps) * W(c) * (ref_lse[p] - X(p, c));
        if (!std::isinf(ref_gt[i])) tgrad_scale = std::max(tgrad_scale, std::abs(ref_gt[i]));
        bound_gt[i] = std::abs(g * (1 - eps) * W(c)) * (lse_bound(p) + 6 * u.u_acc * std::abs(ref_lse[p] - X(p, c))) +
            (g_err + u.u_out) * std::abs(ref_gt[i]) + u.out_step;
      } else if (y[p] == ignore_index) {
        ref_gi[i] = 0;
        continue;
      } else {
        a = (c == y[p] ? (1 - eps) * W(y[p]) : 0.0) + eps / C * W(c);
      }
      ref_gi[i] = g * (ref_A[p] * prob_c - a);
      grad_scale = std::max(grad_scale, std::abs(ref_gi[i]));
      const double prob_err = lse_bound(p) + 2 * u.u_acc * std::abs(X(p, c) - ref_lse[p]) + (n_round + 8) * u.u_acc;
      bound_gi[i] = std::abs(g) * (ref_A[p] * (prob_c * prob_err + tiny) + 6 * u.u_acc * std::abs(a)) +
          (g_err + u.u_out) * std::abs(ref_gi[i]) + u.out_step;
    }
  }
  for (int64_t i = 0; i < numel; ++i) {
    if (cs.strict()) {
      check_abs(cs, "grad_input", static_cast<double>(gi[i]), ref_gi[i], bound_gi[i]);
      if (kProb) check_abs(cs, "grad_target", static_cast<double>(gt[i]), ref_gt[i], bound_gt[i]);
      continue;
    }
    check(cs, "grad_input", static_cast<double>(gi[i]), ref_gi[i], grad_scale, tol);
    if (kProb) check(cs, "grad_target", static_cast<double>(gt[i]), ref_gt[i], tgrad_scale, tol);
  }
  if (!kProb && cs.ignored) {
    for (int64_t p = 0; p < P; ++p) {
      if (y[p] != ignore_index) continue;
      for (int64_t c = 0; c < C; ++c) {
        const double v = static_cast<double>(gi[(p / S) * C * S + c * S + p % S]);
        if (v != 0.0 || std::signbit(v)) { ++failures; std::printf("ignored grad not +0 in %s\n", cs.name.c_str()); break; }
      }
    }
  }
}

template <typename scalar_t>
void run_case(const Case& cs, double tol) {
  const int before = failures;
  if (cs.prob) run<scalar_t, true>(cs, tol); else run<scalar_t, false>(cs, tol);
  ++(failures == before ? cases_passed : cases_failed);
  std::printf("%s %s\n", failures == before ? "ok    " : "FAILED", cs.name.c_str());
}

// An out-of-range class index must trip CUDA_KERNEL_ASSERT in both layouts.
void out_of_range_target_asserts() {
  for (const int64_t inner : {int64_t(1), int64_t(3)}) {
    const int64_t outer = 2, classes = 4, positions = outer * inner;
    // Padding: unlike a GPU, the emulation carries on after a failed assertion.
    std::vector<float> x(outer * classes * inner + 4 * inner, 0.5f);
    std::vector<int64_t> y(positions, 1);
    y[positions - 1] = classes;  // one past the last class
    CrossEntropyArgs<float, float> args{};
    args.input = x.data();
    args.target_index = y.data();
    args.outer = outer;
    args.classes = classes;
    args.inner = inner;
    args.ignore_index = -100;
    std::vector<lse_type<float>> lse(positions);
    std::vector<float> out(positions);
    const int before = emu_assert_failures.load();
    if (inner == 1) {
      const RowsLaunch rows = rows_launch<float>(outer, classes, 4);
      emu_launch(rows.blocks, rows.block_threads, [&] {
        cross_entropy_forward_rows_kernel<float, float, false, 4>(
            args, lse.data(), out.data(), nullptr, nullptr, rows.group_size, true);
      });
    } else {
      emu_launch(strided_blocks(positions), kStridedBlockThreads, [&] {
        cross_entropy_forward_strided_kernel<float, float, false>(args, lse.data(), out.data(), nullptr, nullptr);
      });
    }
    const bool tripped = emu_assert_failures.load() > before;
    emu_assert_failures = before;
    if (!tripped) {
      ++failures;
    }
    ++(tripped ? cases_passed : cases_failed);
    std::printf("%s out-of-range class index asserts (inner=%lld)\n", tripped ? "ok    " : "FAILED",
                static_cast<long long>(inner));
  }
}

int main() {
  //            name                                 outer classes inner prob   weight smooth red mis tmis  ignored neg_inf
  run_case<float>({"f32 rows C=10 index none w+s+ignore", 37, 10, 1, false, true, 0.1, 0, 0, false, true, false}, 2e-5);
  run_case<float>({"f32 rows C=10 prob mean w+s misaligned", 37, 10, 1, true, true, 0.2, 1, 1, false, false, false}, 2e-5);
  run_case<float>({"f32 rows C=3000 index sum misaligned", 5, 3000, 1, false, false, 0.0, 2, 1, false, false, false}, 2e-5);
  run_case<c10::BFloat16>({"bf16 rows C=3001 prob none w", 4, 3001, 1, true, true, 0.0, 0, 0, false, false, false}, 2e-2);
  run_case<double>({"f64 rows C=100 index mean w+s+ignore", 9, 100, 1, false, true, 0.3, 1, 0, false, true, false}, 1e-10);
  run_case<float>({"f32 K-dim 3x7x50 index mean w+ignore", 3, 7, 50, false, true, 0.0, 1, 0, false, true, false}, 2e-5);
  run_case<c10::Half>({"f16 K-dim 2x5x33 prob sum s", 2, 5, 33, true, false, 0.1, 2, 0, false, false, false}, 2e-2);
  run_case<float>({"f32 rows C=1 index none", 3, 1, 1, false, false, 0.0, 0, 0, false, false, false}, 2e-5);
  run_case<float>({"f32 rows C=300 prob none target misaligned", 3, 300, 1, true, false, 0.0, 0, 0, true, false, false}, 2e-5);
  run_case<float>({"f32 rows C=40000 index mean w+s", 2, 40000, 1, false, true, 0.1, 1, 0, false, false, false}, 2e-5);
  run_case<float>({"f32 rows C=12 prob none -inf where t=0", 5, 12, 1, true, false, 0.0, 0, 0, false, false, true}, 2e-5);
  run_case<float>({"f32 K-dim 2x4x9 prob mean -inf where t=0", 2, 4, 9, true, true, 0.0, 1, 0, false, false, true}, 2e-5);
  run_case<c10::BFloat16>({"bf16 rows C=517 index sum s misaligned", 6, 517, 1, false, false, 0.05, 2, 3, false, true, false}, 2e-2);
  run_case<float>({"f32 rows C=3 index mean many rows", 600, 3, 1, false, true, 0.0, 1, 0, false, true, false}, 2e-5);
  run_case<float>({"f32 rows C=40 prob sum 700 rows w+s", 700, 40, 1, true, true, 0.1, 2, 0, false, false, false}, 2e-5);
  run_case<float>({"f32 K-dim 2x3x700 index none w+s+ignore", 2, 3, 700, false, true, 0.2, 0, 0, false, true, false}, 2e-5);
  run_case<double>({"f64 K-dim 3x6x500 prob mean w", 3, 6, 500, true, true, 0.0, 1, 0, false, false, false}, 1e-10);
  // Large logits and confident rows, graded strictly (see Bounds); the tol argument is unused.
  //            name                                 outer classes inner prob   weight smooth red mis tmis  ignored neg_inf offset confident hit
  run_case<float>({"f32 rows C=10 index none +30", 37, 10, 1, false, true, 0.0, 0, 0, false, false, false, 30.0}, 0);
  run_case<float>({"f32 rows C=10 index none +60", 37, 10, 1, false, false, 0.0, 0, 1, false, false, false, 60.0}, 0);
  run_case<float>({"f32 rows C=10 index none +1000", 37, 10, 1, false, true, 0.0, 0, 0, false, false, false, 1000.0}, 0);
  run_case<float>({"f32 rows C=300 index sum +1000 w+s", 5, 300, 1, false, true, 0.1, 2, 1, false, false, false, 1000.0}, 0);
  run_case<float>({"f32 rows C=10 prob none +1000 w", 37, 10, 1, true, true, 0.0, 0, 0, false, false, false, 1000.0}, 0);
  run_case<float>({"f32 rows C=3000 prob mean +60", 3, 3000, 1, true, false, 0.1, 1, 0, false, false, false, 60.0}, 0);
  run_case<float>({"f32 K-dim 3x7x50 index none +1000", 3, 7, 50, false, false, 0.0, 0, 0, false, false, false, 1000.0}, 0);
  run_case<float>({"f32 K-dim 2x5x33 prob none +1000 w+s", 2, 5, 33, true, true, 0.1, 0, 0, false, false, false, 1000.0}, 0);
  run_case<float>({"f32 rows C=10 index none confident hit", 37, 10, 1, false, true, 0.0, 0, 0, false, false, false, 0.0, true, true}, 0);
  run_case<float>({"f32 rows C=10 index none confident miss", 37, 10, 1, false, true, 0.0, 0, 0, false, false, false, 0.0, true, false}, 0);
  run_case<float>({"f32 rows C=1000 index mean confident hit +30", 6, 1000, 1, false, false, 0.0, 1, 0, false, true, false, 30.0, true, true}, 0);
  run_case<float>({"f32 K-dim 3x7x50 index none confident miss +60", 3, 7, 50, false, true, 0.0, 0, 0, false, false, false, 60.0, true, false}, 0);
  run_case<float>({"f32 rows C=10 prob none confident +30", 37, 10, 1, true, false, 0.0, 0, 0, false, false, false, 30.0, true}, 0);
  run_case<c10::BFloat16>({"bf16 rows C=10 index none +1000 confident miss", 37, 10, 1, false, false, 0.0, 0, 0, false, false, false, 1000.0, true, false}, 0);
  run_case<c10::Half>({"f16 rows C=100 prob none +1000", 9, 100, 1, true, true, 0.0, 0, 0, false, false, false, 1000.0}, 0);
  out_of_range_target_asserts();
  if (emu_assert_failures != 0) {
    std::printf("FAILED unexpected device assertion failures: %d\n", emu_assert_failures.load());
    ++cases_failed;
  }
  std::printf("cuda_emulation: %d passed, %d failed\n", cases_passed, cases_failed);
  return cases_failed == 0 ? 0 : 1;
}
