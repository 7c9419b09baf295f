"""Published BRIGHT nDCG@10 (%) of docs/reference.md section 7, printed beside our numbers."""
from __future__ import annotations

from reasonir_jax.eval.bright_data import TASKS

# Same order as bright_data.TASKS.
_ORDER = ("biology", "earth_science", "economics", "psychology", "robotics", "stackoverflow",
          "sustainable_living", "leetcode", "pony", "aops", "theoremqa_questions", "theoremqa_theorems")
assert set(_ORDER) == set(TASKS)


def _row(*values):
  *per_task, avg = values
  return dict(zip(_ORDER, per_task)) | {"average": avg}


PUBLISHED = {
    "original": {
        "ReasonIR-8B": _row(26.2, 31.4, 23.3, 30.0, 18.0, 23.9, 20.5, 35.0, 10.5, 14.7, 31.9, 27.2, 24.4),
        "BM25": _row(18.9, 27.2, 14.9, 12.5, 13.6, 18.4, 15.0, 24.4, 7.9, 6.2, 10.4, 4.9, 14.5),
    },
    "gpt4_reason": {
        "ReasonIR-8B": _row(43.6, 42.9, 32.7, 38.8, 20.9, 25.8, 27.5, 31.5, 19.6, 7.4, 33.1, 35.7, 29.9),
        "BM25": _row(53.6, 53.6, 24.3, 38.6, 18.8, 22.7, 25.9, 19.3, 17.7, 3.9, 20.2, 18.9, 26.5),
    },
}


def format_table(results: dict, queries: str, title: str = "ours") -> str:
  """A plain-text table: our nDCG@10 and recall@100 (%) and the published nDCG@10 (%)."""
  published = PUBLISHED.get(queries, {})
  note = "" if published else " (no published per-task numbers for this setting)"
  header = f"{'task':<22}{title + ' nDCG@10':>16}{'recall@100':>12}" + "".join(
      f"{name + ' (pub.)':>20}" for name in published)
  lines = [f"BRIGHT, {queries} queries{note}", header, "-" * len(header)]
  for task, m in results.items():
    row = f"{task:<22}{100 * m['ndcg@10']:>16.1f}{100 * m['recall@100']:>12.1f}"
    row += "".join(f"{published[n].get(task, float('nan')):>20.1f}" for n in published)
    lines.append(row)
  if published and "average" in results and len(results) - 1 < len(TASKS):
    lines.append(f"(published averages are over all {len(TASKS)} tasks; ours over {len(results) - 1})")
  return "\n".join(lines)
