"""The serve bench's pieces that need no engine: the conversations plain vLLM gets are the ones the
gateway builds (real index, real embedder), and the ratios and chart come from the reports."""

from __future__ import annotations

from bentos.chat.prompting import INSTRUCTIONS
from bentos.settings import PROJECT_DIR, Settings
from bentos.tools.bench import (
    ENGINE_STEP,
    PREPARE_STEP,
    QUESTIONS,
    augmented_conversations,
    chart,
    index_corpus,
    print_steps,
    ratios,
    step_means,
    totals_in,
)


def test_plain_vllm_gets_the_gateways_conversations(tmp_path):
    settings = Settings()
    index_corpus(settings, PROJECT_DIR / "docs", tmp_path / "db")
    conversations = augmented_conversations(settings, tmp_path / "db")
    assert len(conversations) == len(QUESTIONS)
    for q, (system, user) in zip(QUESTIONS, conversations):
        assert system["role"] == "system" and system["content"].startswith(INSTRUCTIONS) and "[1] (" in system["content"]
        assert user == {"role": "user", "content": q}


def level(tps: float, ttft: float) -> dict:
    return {"tokens_per_s": tps, "ttft_p50_ms": ttft, "ttft_p95_ms": ttft, "itl_p50_ms": 1.0, "itl_p95_ms": 2.0, "failed": 0}


def test_ratios_and_chart(tmp_path):
    results = {
        "targets": {
            "vllm": {"levels": {"1": level(100, 50), "8": level(400, 80)}},
            "gateway": {"levels": {"1": level(95, 62), "8": level(380, 95)}},
        }
    }
    assert ratios(results, [1, 8]) == {
        "1": {"throughput_ratio": 0.95, "added_ttft_p50_ms": 12.0},
        "8": {"throughput_ratio": 0.95, "added_ttft_p50_ms": 15.0},
    }
    chart(results, [1, 8], tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_step_table_reads_each_step_and_the_engines_own_ttft(capsys):
    def scrape(n: int, embed_s: float, ttft_s: float) -> str:
        return (
            f'ragserve_chat_step_seconds_sum{{step="embed"}} {embed_s}\nragserve_chat_step_seconds_count{{step="embed"}} {n}\n'
            f"ragserve_gateway_prepare_seconds_sum {2 * embed_s}\nragserve_gateway_prepare_seconds_count {n}\n"
            f'vllm:time_to_first_token_seconds_sum{{model_name="m"}} {ttft_s}\n'
            f'vllm:time_to_first_token_seconds_count{{model_name="m"}} {n}\n'
        )

    before, after = totals_in(scrape(2, 0.02, 0.4)), totals_in(scrape(6, 0.10, 1.2))
    means = step_means(before, after)
    assert means == {"embed": 20.0, PREPARE_STEP: 40.0, ENGINE_STEP: 200.0}
    assert step_means(after, after) == {}  # no request in between: no mean, rather than 0
    results = {"targets": {"gateway": {"levels": {"1": {"steps_ms_mean": means}}}, "vllm": {"levels": {"1": {"steps_ms_mean": {}}}}}}
    print_steps(results, [1])
    table = capsys.readouterr().out
    assert "embedding" in table and "20.0" in table and "= before the model" in table
    assert "held back by masking" not in table  # no data, no row


def test_soak_report_tells_a_leak_from_a_one_off_step(tmp_path):
    from bentos.tools.bench_soak import report, slope_mb_per_min

    # 10 minutes sampled every 5 s: the gateway steps up once at the re-index (minute 5), the model
    # service leaks 2 MB a minute.
    samples = [(i / 12, {"gateway": 300.0 + (20 if i >= 60 else 0), "model service": 500.0 + 2 * i / 12}) for i in range(120)]
    assert slope_mb_per_min(samples, "gateway", 6.0) == 0.0
    assert slope_mb_per_min(samples, "model service", 6.0) == 2.0
    assert slope_mb_per_min(samples, "gateway", 9.99) is None  # too few points to say
    results = [{"minute": int(i / 12), "error": "", "status": 200, "s": 0.1} for i in range(120)]
    summary = report(results, samples, str(tmp_path / "soak.json"), settle_min=6.0)
    assert summary["rss_slope_after_reindex_mb_per_min"] == {"gateway": 0.0, "model service": 2.0}
    assert summary["rss_growth_after_warmup_mb"]["gateway"] == 20.0 and summary["server_errors"] == 0
