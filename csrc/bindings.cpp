// pybind11 bindings of bort._core: conversions only, no logic.
// std::invalid_argument from the core surfaces as ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <mutex>
#include <string>
#include <utility>

#include "arch.hpp"
#include "encoder/encoder.hpp"
#include "encoder/linear.hpp"
#include "frontier/frontier.hpp"
#include "gemm/backend.hpp"

namespace py = pybind11;

namespace {

using f64_array = py::array_t<double, py::array::c_style | py::array::forcecast>;

// The encoder's dtypes by the names Python uses: exported as bort._core.DTYPES and read by
// parse_dtype, so a new one is one line here.
constexpr std::pair<const char*, bort::encoder::Dtype> kDtypes[] = {
    {"fp32", bort::encoder::Dtype::F32},
    {"bf16", bort::encoder::Dtype::BF16},
    {"int8", bort::encoder::Dtype::I8},
};

py::tuple dtype_names() {
  py::list names;
  for (const auto& [name, dtype] : kDtypes) names.append(name);
  return py::tuple(names);
}

bort::encoder::Dtype parse_dtype(const std::string& name) {
  std::string known;
  for (const auto& [n, dtype] : kDtypes) {
    if (name == n) return dtype;
    known += (known.empty() ? "" : ", ") + std::string(n);
  }
  throw std::invalid_argument("dtype '" + name + "' is not available; choose from " + known);
}

std::vector<double> to_vector(const f64_array& a, const char* what) {
  if (a.ndim() != 1) throw std::invalid_argument(std::string(what) + " must be 1-D");
  return std::vector<double>(a.data(), a.data() + a.size());
}

py::tuple frontier_solve(const std::vector<std::pair<f64_array, f64_array>>& layers,
                         double base_cost, double base_error, double epsilon, size_t max_states,
                         bool thin) {
  std::vector<bort::frontier::Choices> choices;
  for (const auto& [cost, error] : layers)
    choices.push_back({to_vector(cost, "cost"), to_vector(error, "error")});
  bort::frontier::Front front;
  {
    py::gil_scoped_release release;
    front = bort::frontier::solve(choices, base_cost, base_error, epsilon, max_states, thin);
  }
  const auto p = static_cast<py::ssize_t>(front.cost.size());
  const auto n = static_cast<py::ssize_t>(front.layers);
  py::array_t<int32_t> choice({p, n});
  std::copy(front.choice.begin(), front.choice.end(), choice.mutable_data());
  return py::make_tuple(py::array_t<double>(p, front.cost.data()),
                        py::array_t<double>(p, front.error.data()), choice);
}

using i64_array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// An integer (batch, seq) array as C-contiguous int64; None stays empty. Floats are refused
// rather than truncated.
i64_array token_array(const py::object& obj, const char* name, bool required) {
  if (obj.is_none()) {
    if (required) throw std::invalid_argument(std::string(name) + " is required");
    return i64_array();
  }
  py::array a = py::array::ensure(obj);
  if (!a) throw std::invalid_argument(std::string(name) + " must be an array of integers");
  const char kind = a.dtype().kind();
  if (kind != 'i' && kind != 'u' && kind != 'b')
    throw std::invalid_argument(std::string(name) + " must hold integers, got dtype " +
                                std::string(py::str(a.dtype())));
  if (a.ndim() != 2)
    throw std::invalid_argument(std::string(name) + " must be 2-D (batch, seq), got " +
                                std::to_string(a.ndim()) + "-D");
  return i64_array::ensure(a);
}

// A numpy array that owns the vector's buffer (no copy of the encoder's output).
py::array_t<float> as_array(std::vector<float>&& v, std::vector<py::ssize_t> shape) {
  auto* owned = new std::vector<float>(std::move(v));
  py::capsule free(owned, [](void* p) { delete static_cast<std::vector<float>*>(p); });
  return py::array_t<float>(shape, owned->data(), free);
}

py::dict encoder_forward(const bort::encoder::Encoder& enc, const py::object& ids,
                         const py::object& mask, const py::object& types, bool timed) {
  i64_array input_ids = token_array(ids, "input_ids", true);
  i64_array attention_mask = token_array(mask, "attention_mask", false);
  i64_array token_type_ids = token_array(types, "token_type_ids", false);
  for (const i64_array* other : {&attention_mask, &token_type_ids})
    if (other->size() && (other->shape(0) != input_ids.shape(0) || other->shape(1) != input_ids.shape(1)))
      throw std::invalid_argument(std::string(other == &attention_mask ? "attention_mask" : "token_type_ids") +
                                  " has shape (" + std::to_string(other->shape(0)) + ", " +
                                  std::to_string(other->shape(1)) + "), input_ids (" +
                                  std::to_string(input_ids.shape(0)) + ", " +
                                  std::to_string(input_ids.shape(1)) + ")");
  bort::encoder::Batch batch;
  batch.batch = input_ids.shape(0);
  batch.seq = input_ids.shape(1);
  batch.input_ids = input_ids.data();
  batch.attention_mask = attention_mask.size() ? attention_mask.data() : nullptr;
  batch.token_type_ids = token_type_ids.size() ? token_type_ids.data() : nullptr;
  bort::encoder::Output out;
  {
    py::gil_scoped_release release;
    out = enc.forward(batch, timed);
  }
  const py::ssize_t B = batch.batch, S = batch.seq, H = enc.arch().hidden;
  py::dict result;
  result["last_hidden_state"] = as_array(std::move(out.last_hidden_state), {B, S, H});
  if (!out.pooler_output.empty())
    result["pooler_output"] = as_array(std::move(out.pooler_output), {B, H});
  if (!out.logits.empty())
    result["logits"] = as_array(std::move(out.logits),
                                {B, static_cast<py::ssize_t>(enc.arch().num_labels)});
  if (timed) result["sublayer_ms"] = out.sublayer_ms;
  return result;
}

using f32_array = py::array_t<float, py::array::c_style | py::array::forcecast>;

// What runs here (gemm/backend.hpp): ISA, features, and whose GEMM each dtype gets.
py::dict backend_info() {
  const bort::gemm::Backend& be = bort::gemm::backend();
  py::dict gemm, features;
  for (const auto& [name, dtype] : kDtypes) gemm[name] = be.gemm_name(bort::encoder::gemm_type(dtype));
  features["avx512"] = be.isa == "avx512";
  features["avx512_bf16"] = be.bf16;
  features["avx512_vnni"] = be.vnni;
  features["amx"] = be.amx;
  py::dict out;
  out["isa"] = be.isa;
  out["gemm"] = gemm;
  out["features"] = features;
  out["int8_weight_max"] = be.int8_max;
  out["description"] = be.describe();
  return out;
}

// One linear layer through the encoder's own path (conversion, packing, kernels, epilogue): the
// kernels' reference tests and bench/gemm.py call it. Weights packed once, at construction.
class PyLinear {
 public:
  PyLinear(const f32_array& w, const std::string& dtype, int num_threads) {
    if (w.ndim() != 2 || w.shape(0) < 1 || w.shape(1) < 1)
      throw std::invalid_argument("w must be a non-empty (N, K) matrix");
    if (num_threads < 1) throw std::invalid_argument("num_threads must be >= 1");
    n_ = w.shape(0);
    k_ = w.shape(1);
    const std::vector<float> weights(w.data(), w.data() + n_ * k_);
    pool_ = std::make_unique<bort::encoder::ThreadPool>(num_threads);
    layer_ = bort::encoder::Linear(weights, n_, k_, num_threads, parse_dtype(dtype));
  }

  f32_array call(const f32_array& x, const py::object& bias, const std::string& act,
                 const py::object& residual) {
    if (x.ndim() != 2 || x.shape(1) != k_ || x.shape(0) < 1)
      throw std::invalid_argument("x must be (M, " + std::to_string(k_) + ") with M >= 1");
    const int64_t M = x.shape(0);
    using bort::encoder::Act;
    const std::pair<const char*, Act> acts[] = {{"none", Act::None}, {"gelu", Act::GeluErf},
                                                {"gelu_tanh", Act::GeluTanh}, {"relu", Act::Relu}};
    bort::gemm::Epilogue e;
    bool known = false;
    for (const auto& [name, a] : acts)
      if (act == name) e.act = a, known = true;
    if (!known) throw std::invalid_argument("act must be none, gelu, gelu_tanh or relu");
    f32_array b, r;
    if (!bias.is_none()) {
      b = f32_array::ensure(bias);
      if (!b || b.ndim() != 1 || b.shape(0) != n_) throw std::invalid_argument("bias must have shape (N,)");
      e.bias = b.data();
    }
    if (e.act != Act::None && !e.bias) throw std::invalid_argument("an activation needs a bias");
    if (!residual.is_none()) {
      r = f32_array::ensure(residual);
      if (!r || r.ndim() != 2 || r.shape(0) != M || r.shape(1) != n_)
        throw std::invalid_argument("residual must have shape (M, N)");
      e.residual = r.data();
      e.ldr = n_;
    }
    f32_array y({M, n_});
    float* out = y.mutable_data();
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);  // one scratch
      layer_(*pool_, x.data(), M, out, scratch_, e);
    }
    return y;
  }

 private:
  int64_t n_ = 0, k_ = 0;
  std::unique_ptr<bort::encoder::ThreadPool> pool_;
  bort::encoder::Linear layer_;
  bort::encoder::GemmScratch scratch_;
  std::mutex mutex_;
};

// Operations per second of the dtype's own kernel instruction in a register-only loop, over
// about `seconds` (0 where this CPU has no own kernel for it).
double gemm_peak(const std::string& dtype, double seconds) {
  const bort::gemm::Kernel& k =
      bort::gemm::backend().own.get(bort::encoder::gemm_type(parse_dtype(dtype)));
  if (!k) return 0.0;
  py::gil_scoped_release release;
  float sink = 0;
  using clock = std::chrono::steady_clock;
  double best = 0;
  const auto end = clock::now() + std::chrono::duration<double>(seconds);
  while (clock::now() < end) {
    const auto t0 = clock::now();
    const double ops = k.peak(200000, &sink);
    best = std::max(best, ops / std::chrono::duration<double>(clock::now() - t0).count());
  }
  return best + 0.0f * sink;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "bort's C++ core (private; use the bort package)";
  m.attr("__version__") = BORT_VERSION;
  m.attr("DTYPES") = dtype_names();

  py::enum_<bort::Activation>(m, "Activation", py::module_local())
      .value("gelu_erf", bort::Activation::GeluErf)
      .value("gelu_tanh", bort::Activation::GeluTanh)
      .value("relu", bort::Activation::Relu);

  py::enum_<bort::PositionStyle>(m, "PositionStyle", py::module_local())
      .value("absolute", bort::PositionStyle::Absolute)
      .value("roberta", bort::PositionStyle::Roberta);

  py::class_<bort::Layer>(m, "Layer", py::module_local())
      .def(py::init([](int64_t heads, int64_t head_dim, int64_t ffn) {
             return bort::Layer{heads, head_dim, ffn};
           }),
           py::arg("heads"), py::arg("head_dim"), py::arg("ffn"))
      .def_readonly("heads", &bort::Layer::heads)
      .def_readonly("head_dim", &bort::Layer::head_dim)
      .def_readonly("ffn", &bort::Layer::ffn)
      .def("params", &bort::Layer::params, py::arg("hidden"))
      .def("flops", &bort::Layer::flops, py::arg("hidden"), py::arg("batch"), py::arg("seq_len"));

  py::class_<bort::Params>(m, "Params", py::module_local())
      .def_readonly("embeddings", &bort::Params::embeddings)
      .def_readonly("encoder", &bort::Params::encoder)
      .def_readonly("pooler", &bort::Params::pooler)
      .def_readonly("head", &bort::Params::head)
      .def_property_readonly("total", &bort::Params::total);

  py::class_<bort::Arch>(m, "Arch", py::module_local())
      .def(py::init([](int64_t hidden, std::vector<bort::Layer> layers, int64_t vocab_size,
                       int64_t max_positions, int64_t type_vocab_size, bort::Activation activation,
                       double layer_norm_eps, bort::PositionStyle position_style,
                       int64_t pad_token_id, bool pooler, int64_t num_labels, bool mlm_head) {
             bort::Arch a{hidden,         std::move(layers), vocab_size,     max_positions,
                          type_vocab_size, activation,       layer_norm_eps, position_style,
                          pad_token_id,   pooler,            num_labels,     mlm_head};
             a.validate();
             return a;
           }),
           py::kw_only(), py::arg("hidden"), py::arg("layers"), py::arg("vocab_size"),
           py::arg("max_positions"), py::arg("type_vocab_size"), py::arg("activation"),
           py::arg("layer_norm_eps"), py::arg("position_style"), py::arg("pad_token_id"),
           py::arg("pooler"), py::arg("num_labels"), py::arg("mlm_head") = false)
      .def_readonly("hidden", &bort::Arch::hidden)
      .def_readonly("layers", &bort::Arch::layers)
      .def("params", &bort::Arch::params)
      .def("flops", &bort::Arch::flops, py::arg("batch"), py::arg("seq_len"));

  py::class_<bort::encoder::Encoder>(m, "Encoder", py::module_local())
      .def(py::init([](const bort::Arch& arch, const py::dict& weights, int num_threads,
                       const std::string& dtype) {
             std::map<std::string, bort::encoder::TensorView> views;
             std::vector<py::array_t<float, py::array::c_style | py::array::forcecast>> held;
             for (auto item : weights) {
               auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(
                   item.second);
               if (!a) throw std::invalid_argument("weight " + std::string(py::str(item.first)) +
                                                   " is not a numeric array");
               held.push_back(a);
               bort::encoder::TensorView v{a.data(), {}};
               for (py::ssize_t i = 0; i < a.ndim(); ++i) v.shape.push_back(a.shape(i));
               views[py::str(item.first)] = v;
             }
             if (num_threads < 1) throw std::invalid_argument("num_threads must be >= 1");
             return std::make_unique<bort::encoder::Encoder>(arch, views, num_threads,
                                                             parse_dtype(dtype));
           }),
           py::arg("arch"), py::arg("weights"), py::arg("num_threads"), py::arg("dtype") = "fp32")
      .def("forward", &encoder_forward, py::arg("input_ids"), py::arg("attention_mask") = py::none(),
           py::arg("token_type_ids") = py::none(), py::arg("timed") = false,
           "Run the encoder; returns a dict of float32 arrays (last_hidden_state (B, S, H), "
           "pooler_output, logits; sublayer_ms when timed). The GIL is released while it runs.")
      .def_property_readonly("num_threads", &bort::encoder::Encoder::num_threads);
  m.def("encoder_isa", &bort::encoder::isa,
        "The instruction set the encoder's kernels use here ('avx512' or 'avx2'; BORT_ISA lowers it).");
  m.def("backend", &backend_info,
        "What runs on this CPU, decided once from CPUID features (BORT_ISA / BORT_GEMM force it): "
        "{'isa', 'gemm': {dtype: e.g. 'own-avx512vnni' | 'mkl'}, 'features', 'int8_weight_max', "
        "'description'}.");
  py::class_<PyLinear>(m, "Linear", py::module_local())
      .def(py::init<const f32_array&, const std::string&, int>(), py::arg("w"),
           py::arg("dtype") = "fp32", py::arg("num_threads") = 1)
      .def("__call__", &PyLinear::call, py::arg("x"), py::arg("bias") = py::none(),
           py::arg("act") = "none", py::arg("residual") = py::none(),
           "y = act(x · wᵀ + bias) + residual through the encoder's linear layer (its conversion, "
           "packing, GEMM and epilogue), for tests against a reference and bench/gemm.py.");
  m.def("gemm_peak", &gemm_peak, py::arg("dtype"), py::arg("seconds") = 0.2,
        "Operations per second of the dtype's own GEMM instruction in a register-only loop "
        "(0.0 where this CPU runs MKL's for it).");

  m.def("frontier_solve", &frontier_solve, py::arg("layers"), py::arg("base_cost"),
        py::arg("base_error"), py::arg("epsilon"), py::arg("max_states"), py::arg("thin") = true,
        "ε-approximate (cost, error) Pareto front over one choice per layer; see "
        "csrc/frontier/frontier.hpp. layers: [(cost (C,), error (C,)), ...]. Returns "
        "(cost (P,), error (P,), choice (P, n) int32).");
  m.def(
      "frontier_thin",
      [](const f64_array& cost, const f64_array& error, double ratio) {
        const auto kept =
            bort::frontier::thin(to_vector(cost, "cost"), to_vector(error, "error"), ratio);
        const std::vector<int64_t> out(kept.begin(), kept.end());
        return py::array_t<int64_t>(static_cast<py::ssize_t>(out.size()), out.data());
      },
      py::arg("cost"), py::arg("error"), py::arg("ratio"),
      "Indices of a thinned Pareto front (cost ascending, error descending): every dropped point "
      "has a kept one with error <= and cost <= ratio x.");
}
