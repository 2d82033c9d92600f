// The frontier table: an ε-approximate Pareto front of cost against error over one choice per
// layer, by dynamic programming (a multiple-choice knapsack on a geometric cost grid).
//
// Input: n layers, each a list of choices (cost ≥ 0, error ≥ 0); an architecture picks one choice
// per layer, and its cost and error are base + the sums over layers (both are additive: p and the
// FLOP count are sums over layers, latency is measured per sublayer, and the error proxy sums the
// importance of what is removed).
//
// Guarantee (ε > 0): for every architecture x of the space the result holds some y with
//     cost(y) ≤ (1 + ε) · cost(x)   and   error(y) ≤ error(x).
// Why: after each layer, partial sums are binned on a geometric grid of ratio δ = (1+ε)^(1/2n) and
// each bin keeps its least-error state; a kept state is at most δ more costly than any state it
// replaces and never worse in error, and extending both by the same choice keeps that (induction
// over layers: δ^n = √(1+ε)). `thin` then drops points greedily at ratio √(1+ε), which costs another
// √(1+ε) at most. Cost 0 has a bin of its own. ε = 0 keeps the exact Pareto set (no binning).
//
// Size: the final front has at most ⌈log_√(1+ε)(c_max / c_min)⌉ + 2 points (consecutive kept
// points differ by more than √(1+ε) in cost, plus the zero-cost point).
// Time: O(n · S · C) with S ≤ 2n·ln(c_max/c_min)/ln(1+ε) + 2 bins and C the choices left per layer
// after dropping each layer's dominated choices (no cheaper-or-equal choice with less error);
// memory O(n · S) for the back-pointers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

namespace bort::frontier {

struct Choices {
  std::vector<double> cost;   // (C,)
  std::vector<double> error;  // (C,)
};

struct Front {
  std::vector<double> cost;     // (P,) ascending
  std::vector<double> error;    // (P,) strictly descending
  std::vector<int32_t> choice;  // (P, n) row-major: the choice index taken in each layer
  size_t layers = 0;
};

namespace detail {

inline void check_finite(double v, const std::string& what) {
  if (!std::isfinite(v) || v < 0) throw std::invalid_argument(what + " must be finite and >= 0");
}

// Indices of the choices that no other choice dominates (cost ≤ and error ≤, one of them <),
// sorted by cost; of equal (cost, error) pairs the first index stays.
inline std::vector<int32_t> undominated(const Choices& c) {
  std::vector<int32_t> idx(c.cost.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) {
    return c.cost[a] != c.cost[b] ? c.cost[a] < c.cost[b] : c.error[a] < c.error[b];
  });
  std::vector<int32_t> kept;
  double best = std::numeric_limits<double>::infinity();
  for (int32_t i : idx)
    if (c.error[i] < best) {
      kept.push_back(i);
      best = c.error[i];
    }
  return kept;
}

}  // namespace detail

// Keep a sub-front such that every dropped point has a kept one with error ≤ and cost ≤ ratio ×.
// `cost` ascending with `error` strictly descending (a Pareto front). Returns kept indices, ascending.
inline std::vector<size_t> thin(const std::vector<double>& cost, const std::vector<double>& error,
                                double ratio) {
  if (cost.size() != error.size()) throw std::invalid_argument("cost and error differ in length");
  if (!(ratio >= 1.0)) throw std::invalid_argument("thinning ratio must be >= 1");
  for (size_t i = 1; i < cost.size(); ++i)
    if (!(cost[i] > cost[i - 1] && error[i] < error[i - 1]))
      throw std::invalid_argument("thin needs a Pareto front: cost ascending, error descending");
  std::vector<size_t> kept;
  for (size_t j = cost.size(); j-- > 0;) {
    // the last kept point has more cost and less error; it covers j when not too costly
    if (kept.empty() || cost[kept.back()] > ratio * cost[j]) kept.push_back(j);
  }
  std::reverse(kept.begin(), kept.end());
  return kept;
}

// The DP. `max_states` bounds the states kept after any layer (and the exact front when ε = 0):
// beyond it the call fails with a message rather than exhausting memory.
inline Front solve(const std::vector<Choices>& layers, double base_cost, double base_error,
                   double epsilon, size_t max_states, bool thin_result = true) {
  using detail::check_finite;
  check_finite(base_cost, "base cost");
  check_finite(base_error, "base error");
  if (!std::isfinite(epsilon) || epsilon < 0) throw std::invalid_argument("epsilon must be >= 0");
  if (max_states == 0) throw std::invalid_argument("max_states must be positive");
  const size_t n = layers.size();
  std::vector<std::vector<int32_t>> kept(n);
  double lo = base_cost > 0 ? base_cost : std::numeric_limits<double>::infinity();
  double hi = base_cost;
  for (size_t l = 0; l < n; ++l) {
    const Choices& c = layers[l];
    if (c.cost.empty()) throw std::invalid_argument("layer " + std::to_string(l) + " has no choices");
    if (c.cost.size() != c.error.size())
      throw std::invalid_argument("layer " + std::to_string(l) + ": cost and error differ in length");
    for (size_t i = 0; i < c.cost.size(); ++i) {
      check_finite(c.cost[i], "layer " + std::to_string(l) + " cost");
      check_finite(c.error[i], "layer " + std::to_string(l) + " error");
    }
    kept[l] = detail::undominated(c);
    for (int32_t k : kept[l])
      if (c.cost[k] > 0) lo = std::min(lo, c.cost[k]);
    hi += c.cost[kept[l].back()];
  }

  // States after the current layer, sorted by cost; back-pointers per layer for the answer.
  std::vector<double> cost{base_cost}, error{base_error};
  std::vector<std::vector<int32_t>> from(n), pick(n);

  const bool exact = epsilon == 0.0;
  const double log_delta = exact ? 0.0 : std::log1p(epsilon) / (2.0 * std::max<size_t>(n, 1));
  // Bin 0 holds cost 0; bin 1 + ⌊ln(c/lo)/ln δ⌋ the rest.
  size_t bins = 1;
  if (!exact && std::isfinite(lo)) {  // then hi >= lo > 0
    const double span = std::log(hi / lo) / log_delta;
    if (span > 1e8)
      throw std::invalid_argument("the cost grid would need " + std::to_string(span) +
                                  " bins; use a larger epsilon");
    bins = static_cast<size_t>(span) + 3;
  }
  std::vector<double> bin_cost, bin_error;
  std::vector<int32_t> bin_from, bin_pick, bin_stamp;
  if (!exact) {
    bin_cost.resize(bins);
    bin_error.resize(bins);
    bin_from.resize(bins);
    bin_pick.resize(bins);
    bin_stamp.assign(bins, -1);
  }
  auto bin_of = [&](double c) -> size_t {
    if (c <= 0) return 0;
    const double k = std::floor(std::log(c / lo) / log_delta);
    return 1 + static_cast<size_t>(std::clamp(k, 0.0, static_cast<double>(bins - 2)));
  };

  for (size_t l = 0; l < n; ++l) {
    const Choices& ch = layers[l];
    const std::vector<int32_t>& ks = kept[l];
    std::vector<double> next_cost, next_error;
    if (exact) {
      const size_t total = cost.size() * ks.size();
      if (total / ks.size() != cost.size() || total > 64 * max_states)
        throw std::invalid_argument("the exact front grows past max_states (" +
                                    std::to_string(max_states) + "); use epsilon > 0");
      std::vector<double> c(total), e(total);
      std::vector<int32_t> fs(total), ps(total);
      size_t t = 0;
      for (size_t s = 0; s < cost.size(); ++s)
        for (int32_t k : ks) {
          c[t] = cost[s] + ch.cost[k];
          e[t] = error[s] + ch.error[k];
          fs[t] = static_cast<int32_t>(s);
          ps[t] = k;
          ++t;
        }
      std::vector<size_t> order(total);
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(),
                [&](size_t a, size_t b) { return c[a] != c[b] ? c[a] < c[b] : e[a] < e[b]; });
      double best = std::numeric_limits<double>::infinity();
      for (size_t i : order)
        if (e[i] < best) {
          best = e[i];
          next_cost.push_back(c[i]);
          next_error.push_back(e[i]);
          from[l].push_back(fs[i]);
          pick[l].push_back(ps[i]);
        }
    } else {
      const int32_t stamp = static_cast<int32_t>(l);
      size_t first = bins, last = 0;
      for (size_t s = 0; s < cost.size(); ++s) {
        const double cs = cost[s], es = error[s];
        for (int32_t k : ks) {
          const double c = cs + ch.cost[k], e = es + ch.error[k];
          const size_t b = bin_of(c);
          if (bin_stamp[b] != stamp || e < bin_error[b] || (e == bin_error[b] && c < bin_cost[b])) {
            bin_stamp[b] = stamp;
            bin_cost[b] = c;
            bin_error[b] = e;
            bin_from[b] = static_cast<int32_t>(s);
            bin_pick[b] = k;
            first = std::min(first, b);
            last = std::max(last, b);
          }
        }
      }
      // Bins ascend in cost: a state survives only with less error than every cheaper one.
      double best = std::numeric_limits<double>::infinity();
      for (size_t b = first; b <= last; ++b)
        if (bin_stamp[b] == stamp && bin_error[b] < best) {
          best = bin_error[b];
          next_cost.push_back(bin_cost[b]);
          next_error.push_back(bin_error[b]);
          from[l].push_back(bin_from[b]);
          pick[l].push_back(bin_pick[b]);
        }
    }
    if (next_cost.size() > max_states)
      throw std::invalid_argument("the front holds " + std::to_string(next_cost.size()) +
                                  " states after layer " + std::to_string(l) + ", over max_states (" +
                                  std::to_string(max_states) + "); use a larger epsilon");
    cost.swap(next_cost);
    error.swap(next_error);
  }

  std::vector<size_t> rows(cost.size());
  std::iota(rows.begin(), rows.end(), 0);
  if (!exact && thin_result) rows = thin(cost, error, std::sqrt(1.0 + epsilon));

  Front out;
  out.layers = n;
  out.choice.resize(rows.size() * n);
  for (size_t r = 0; r < rows.size(); ++r) {
    out.cost.push_back(cost[rows[r]]);
    out.error.push_back(error[rows[r]]);
    int32_t s = static_cast<int32_t>(rows[r]);
    for (size_t l = n; l-- > 0;) {
      out.choice[r * n + l] = pick[l][s];
      s = from[l][s];
    }
  }
  return out;
}

}  // namespace bort::frontier
