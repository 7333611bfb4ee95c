"""Every claim the README and docs/ make about behaviour names the tests that check it.

The claims are limits, what survives a crash, what is erased, what is cached, what reloads without a
restart, and which options read which variables. Each entry quotes its page (so a reworded claim must be
looked at again here) and names tests that exist. Numbers the docs quote are compared with the code's.
Every option documented with an environment variable reads it, and the option wins over it.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import click
import pytest

REPO = Path(__file__).resolve().parent.parent


class Claim(NamedTuple):
    page: str
    says: str  # quoted from the page (whitespace-insensitive)
    tests: tuple[str, ...]  # tests/<file>.py::<function>


def C(page: str, says: str, *tests: str) -> Claim:
    return Claim(page, says, tests)


E2E, LEDGER, CACHE, FAULTS = "tests/test_errors_e2e.py", "tests/test_ledger_e2e.py", "tests/test_cache_e2e.py", \
    "tests/test_cache_faults.py"
CACHE_E2E, CLAIMS = "tests/test_cache_faults_e2e.py", "tests/test_docs_claims.py"
SHARED, SHARED_E2E = "tests/test_shared_state.py", "tests/test_shared_state_e2e.py"
POOL, POOL_PROFILE = "tests/test_pool.py", "tests/test_pool_profile.py"

CLAIMS_TABLE = [
    # ---- the README's promises ----
    C("README.md", "A feature is never silently answered by a cheaper tier",
      "tests/test_cascade_e2e.py::test_tier1_down_is_503_never_a_cheaper_answer",
      "tests/test_cascade_e2e.py::test_explicit_fallback_is_marked_downgraded",
      "tests/test_cascade_e2e.py::test_gate_failure_with_tier1_down_is_503_not_the_unverified_answer",
      "tests/test_routing.py::test_a_misspelt_feature_is_a_404_naming_close_names_even_with_a_default"),
    C("README.md", "A semantic cache** answers repeated questions without inference",
      f"{CACHE}::test_repeat_and_paraphrase_are_served_from_the_cache_at_no_cost"),
    C("README.md", "The same request again is answered by the semantic cache, without inference",
      "tests/test_readme_e2e.py::test_every_readme_request_answers_within_its_contract"),
    C("README.md", "without it the gateway still gets ready and Tier 1 requests answer 503 naming the variable",
      "tests/test_workstation_e2e.py::test_workstation_without_a_key_is_ready_and_tier_1_answers_503_naming_the_variable",
      "tests/test_hosted.py::test_a_missing_key_is_not_configured_and_requests_name_the_variable"),
    C("README.md", "the audit counts `corrected`, `escalated_to_human` and `negative` as failures of that feature",
      f"{LEDGER}::test_feedback_changes_the_failure_rate"),
    # ---- limits ----
    C("docs/keys.md", "body size (413, `--max-body-bytes`, 1 MiB by default)",
      f"{E2E}::test_body_over_the_limit_is_413", f"{E2E}::test_chunked_body_over_the_limit_is_413"),
    C("docs/keys.md", "message count (400, more than 256 messages)", f"{E2E}::test_too_many_messages_is_a_clean_400"),
    C("docs/keys.md", "prompt plus `max_tokens` beyond the context (400)",
      f"{E2E}::test_prompt_longer_than_context_is_context_length_exceeded"),
    C("docs/keys.md", "a JSON schema nested deeper than 24 levels or with more than 2,000 values (400)",
      f"{E2E}::test_pathological_json_schema_is_a_clean_400"),
    C("docs/keys.md", "invalid UTF-8 or JSON (400)", f"{E2E}::test_malformed_bodies_are_400"),
    C("docs/keys.md", "A client that disconnects mid-stream frees its decoding slot at once",
      "tests/test_batching_e2e.py::test_disconnected_stream_frees_its_slot",
      "tests/test_llama_engine.py::test_a_cancelled_generation_frees_its_slot_before_it_would_have_ended"),
    C("docs/keys.md", "a key over its rate or spend limit is 429 with `Retry-After`",
      "tests/test_security_e2e.py::test_rate_limit_is_429_with_retry_after",
      "tests/test_ledger_budgets_e2e.py::test_sixteen_concurrent_requests_against_a_key_spend_cap_that_admits_three"),
    C("docs/ledger.md", "in `block` mode answers 429 (`budget_exceeded`) until the period ends",
      f"{LEDGER}::test_budget_in_block_mode_answers_429_at_the_limit"),
    C("docs/ledger.md", "16 at once against a budget for 3 get 3 answers",
      "tests/test_ledger_budgets_e2e.py::test_sixteen_concurrent_requests_against_a_budget_that_admits_three"),
    C("docs/ledger.md", "Every field is cut to what its column holds where the row is made",
      "tests/test_ledger_faults.py::test_fields_longer_than_their_columns_are_cut_and_later_rows_still_arrive"),
    C("docs/cache.md", "and the whole cache at most `--cache-max-entries` (100,000) and `--cache-max-bytes` (256 MiB)",
      f"{FAULTS}::test_the_whole_cache_is_bounded_over_every_namespace_and_feature",
      f"{FAULTS}::test_the_whole_cache_is_bounded_in_bytes"),
    C("docs/cache.md", "A feature keeps at most `max_entries` entries and `max_bytes` bytes over all its namespaces",
      "tests/test_cache.py::test_eviction_keeps_the_byte_bound_and_drops_least_recently_used"),
    C("docs/cache.md", "A namespace goes with its last entry",
      f"{FAULTS}::test_the_whole_cache_is_bounded_over_every_namespace_and_feature"),
    C("docs/cache.md", "A namespace that grows past 20,000 entries",
      f"{FAULTS}::test_hnsw_engages_only_in_a_namespace_past_ann_min"),
    # ---- what survives a crash ----
    C("docs/ledger.md", "a `SIGKILL` of the gateway loses no row of any response that was sent",
      f"{LEDGER}::test_sigkill_under_load_keeps_every_answered_row",
      "tests/test_ledger.py::test_rows_spooled_by_a_killed_process_are_loaded_at_the_next_start"),
    C("docs/ledger.md", "while the database is down, requests are still served and rows wait in the spool",
      "tests/test_ledger_faults_e2e.py::test_a_database_outage_is_served_and_spooled_then_replayed",
      "tests/test_ledger.py::test_database_down_rows_stay_spooled_and_are_replayed"),
    C("docs/ledger.md", "A spooled line that is not a row (torn by a crash, corrupt)",
      "tests/test_ledger_faults.py::test_a_process_killed_mid_write_leaves_a_torn_line_that_is_set_aside",
      "tests/test_ledger_faults.py::test_corrupt_and_torn_spool_lines_are_set_aside_and_the_writer_lives_on",
      "tests/test_ledger_faults_e2e.py::test_spool_lines_set_aside_show_on_ready_and_in_metrics"),
    C("docs/ledger.md", "a second gateway on the same data dir is refused",
      "tests/test_ledger_faults_e2e.py::test_a_second_gateway_on_the_same_data_dir_is_refused"),
    C("docs/operations.md", "On SIGINT/SIGTERM the gateway drains in-flight requests, then stops every tier's runner",
      "tests/test_shutdown_e2e.py::test_sigterm_lets_an_in_flight_stream_finish_and_drains_the_spool",
      "tests/test_vllm_e2e.py::test_stopping_the_gateway_leaves_no_vllm_process"),
    C("docs/ledger.md", "a graceful stop drains the spool",
      "tests/test_shutdown_e2e.py::test_sigterm_lets_an_in_flight_stream_finish_and_drains_the_spool"),
    C("docs/evals.md", "a killed run keeps what it finished, and the next run only does what is missing",
      "tests/test_evals_e2e.py::test_a_killed_run_continues_with_only_the_missing_examples"),
    C("docs/profiles.md", "is restarted after a backoff that doubles",
      "tests/test_supervisor.py::test_failed_runner_is_restarted_with_doubling_backoff"),
    # ---- what is erased, what is never kept ----
    C("docs/ledger.md", "Prompt and answer text are stored only for features that opt in",
      f"{LEDGER}::test_every_request_leaves_a_row_with_cost_tokens_and_latency",
      f"{LEDGER}::test_opted_in_feature_keeps_text_with_an_expiry"),
    C("docs/ledger.md", "the writer erases expired text when the gateway starts and every hour",
      "tests/test_ledger_faults.py::test_text_past_its_retention_is_erased_at_start_and_while_running",
      "tests/test_ledger_faults_e2e.py::test_stored_text_past_its_retention_is_erased_when_the_gateway_starts"),
    C("docs/operations.md", "Prompt and completion text are never logged",
      "tests/test_chat_e2e.py::test_request_log_has_one_line_per_request_without_prompt_text"),
    C("docs/keys.md", "Neither provider nor client keys appear in logs",
      "tests/test_security_e2e.py::test_no_secret_appears_in_any_output",
      "tests/test_hosted_faults_e2e.py::test_the_api_key_is_sent_but_never_shown"),
    C("docs/cache.md", "a sweep every 60 s, off the request path, removes expired ones",
      f"{FAULTS}::test_expired_entries_are_swept_without_being_asked_for_again", "tests/test_cache.py::test_entries_expire"),
    C("docs/cache.md", "`corrected`/`negative` feedback on a cached answer removes it",
      f"{CACHE}::test_negative_feedback_removes_the_cached_answer"),
    C("docs/cache.md", "or any request it was served to, on any replica sharing the Redis",
      f"{CACHE}::test_invalidation_by_request_and_by_feature",
      f"{FAULTS}::test_an_answer_served_by_one_replica_is_invalidated_from_another",
      f"{CACHE_E2E}::test_any_replica_invalidates_an_answer_another_replica_served"),
    C("docs/cache.md", "A lookup never returns an entry an invalidation has removed",
      f"{FAULTS}::test_lookup_never_returns_an_answer_invalidated_while_it_embedded"),
    C("docs/cache.md", "an answer whose request began before its feature was invalidated is not stored",
      f"{FAULTS}::test_an_answer_begun_before_an_invalidation_is_not_stored"),
    # ---- what is cached ----
    C("docs/cache.md", "Requests with `temperature: 0` (or any, with `nondeterministic: true`)",
      "tests/test_cache.py::test_only_deterministic_requests_are_cached_unless_opted_in",
      f"{CACHE}::test_uncached_features_and_sampling_requests_bypass_the_cache"),
    C("docs/cache.md", "once their answer has ended normally (and passed the feature's gate)",
      f"{CACHE}::test_an_answer_that_fails_its_gate_is_never_cached"),
    C("docs/cache.md", "The key holds everything that changes the answer",
      "tests/test_cache.py::test_anything_that_changes_the_answer_changes_the_key"),
    C("docs/cache.md", "each key has its own entries, so one tenant never gets another's answer",
      f"{FAULTS}::test_answers_are_scoped_to_the_client_key_unless_the_feature_shares_them",
      f"{CACHE_E2E}::test_a_tenant_never_gets_another_tenants_cached_answer"),
    C("docs/cache.md", "Streaming requests are served from the cache as a stream",
      f"{CACHE}::test_streaming_request_is_served_from_the_cache_as_a_stream"),
    C("docs/cache.md", "the ledger row of a hit has `cache_hit`, the similarity, no tokens and no cost",
      f"{CACHE}::test_repeat_and_paraphrase_are_served_from_the_cache_at_no_cost"),
    C("docs/cache.md", "requests are answered by the model with `x-cache: error`",
      f"{CACHE_E2E}::test_a_redis_outage_is_served_by_the_model_and_shows_on_ready_and_metrics",
      f"{CACHE_E2E}::test_a_store_that_fails_in_the_background_is_counted_and_shown"),
    C("docs/cache.md", "with the GGUF the profile's Tier 3 serves at start",
      "tests/test_cache_embedders.py::test_the_llamacpp_embedder_uses_the_model_tier3_serves",
      "tests/test_cache_embedders.py::test_a_catalog_model_can_be_named_instead"),
    # ---- what reloads without a restart ----
    C("docs/routing.md", "moving a feature is an edit of the table, picked up without a restart",
      "tests/test_cascade_e2e.py::test_file_watcher_reloads_without_a_request",
      "tests/test_cascade_e2e.py::test_reload_rejects_a_broken_table_and_applies_a_good_one"),
    C("docs/operations.md", "A tier whose placement changed (a promoted model) gets a new runner",
      "tests/test_profile_reload_e2e.py::test_profile_edit_swaps_the_tier_runner_and_a_broken_edit_is_rejected",
      "tests/test_live_config.py::test_concurrent_reloads_are_serialised_and_swap_a_tier_once"),
    C("docs/operations.md", "finishes the ones it has (for up to 600 s), then stops",
      "tests/test_live_config.py::test_a_retired_runner_drains_its_requests_then_stops"),
    C("docs/operations.md", "A new runner that fails to start or get ready leaves the old one serving",
      "tests/test_live_config.py::test_the_watcher_survives_a_reload_that_raises_and_keeps_watching",
      "tests/test_live_config.py::test_a_partial_multi_tier_swap_keeps_what_was_swapped_and_its_price"),
    C("docs/operations.md", "Adding or removing a tier needs a restart",
      "tests/test_operations_claims.py::test_adding_or_removing_a_tier_is_refused_until_a_restart"),
    C("docs/operations.md", "the previous configuration keeps serving",
      "tests/test_cascade_e2e.py::test_reload_rejects_a_broken_table_and_applies_a_good_one",
      "tests/test_request_defaults_e2e.py::test_a_bad_request_block_is_refused_at_reload_and_the_old_table_keeps_serving"),
    C("docs/operations.md", "A request keeps the route it started with",
      "tests/test_reload_route_e2e.py::test_a_stream_keeps_the_route_it_started_with_across_a_reload"),
    # ---- which options read which variables ----
    C("docs/operations.md", "An option with a variable in its row also reads it from the environment (the option wins)",
      f"{CLAIMS}::test_every_documented_variable_is_read_by_its_option_and_the_option_wins"),
    C("docs/operations.md", "`--log-level` sets the level of the server's own loggers and of uvicorn's",
      f"{CLAIMS}::test_log_level_reads_tier_runner_log_level"),
    C("docs/profiles.md", "`TIER_RUNNER_SKIP_FIT_CHECK=1` skips it",
      "tests/test_operations_claims.py::test_tier_runner_skip_fit_check_skips_the_fit_check"),
    C("docs/profiles.md", "`TIER_RUNNER_CACHE` moves the cache folder",
      "tests/test_operations_claims.py::test_tier_runner_cache_moves_the_model_cache"),
    C("docs/profiles.md", "replaces `base_url`, and `/ready` says so",
      "tests/test_hosted.py::test_the_base_url_variable_replaces_base_url_and_says_so"),
    C("docs/profiles.md", "A missing key makes the tier `not_configured`",
      "tests/test_hosted.py::test_a_missing_key_is_not_configured_and_requests_name_the_variable"),
    C("docs/operations.md", "pytest` skips them only with `TIER_RUNNER_SKIP_VLLM=1`",
      "tests/test_operations_claims.py::test_tier_runner_skip_vllm_skips_the_vllm_tests_and_says_so"),
    # ---- past one machine: shared limits, gateway replicas, pools ----
    C("docs/keys.md", "a key limited to 30 requests a minute gets 30 in all across any number of replicas",
      f"{SHARED}::test_a_key_limited_to_30_requests_a_minute_gets_30_across_two_replicas",
      f"{SHARED_E2E}::test_a_key_limited_to_30_a_minute_gets_30_in_all_across_both_replicas"),
    C("docs/keys.md", "and a spend cap holds across them",
      f"{SHARED}::test_a_spend_cap_holds_across_replicas_and_settles_book_once",
      f"{SHARED_E2E}::test_a_spend_cap_holds_across_both_replicas"),
    C("docs/keys.md", "the key is served on each replica's own limits, so N replicas may grant up to N times its rate",
      f"{SHARED}::test_a_redis_outage_admits_fail_open_keys_on_local_limits_and_refuses_fail_closed_ones",
      f"{SHARED_E2E}::test_stopping_redis_degrades_as_documented_and_never_answers_500"),
    C("docs/keys.md", "`fail_closed`: its requests that need Redis (a rate limit, a spend cap, its feature's budget) "
      "answer 503 `limits_unavailable` with `Retry-After` until Redis answers",
      f"{SHARED}::test_a_redis_outage_admits_fail_open_keys_on_local_limits_and_refuses_fail_closed_ones",
      f"{SHARED_E2E}::test_stopping_redis_degrades_as_documented_and_never_answers_500"),
    C("docs/scaling.md", "its tokens are charged once it is answered, off the request path",
      f"{SHARED}::test_tokens_charged_on_one_replica_count_on_the_other"),
    C("docs/scaling.md", "a settle replayed after an outage is not booked twice",
      f"{SHARED}::test_a_spend_cap_holds_across_replicas_and_settles_book_once"),
    C("docs/scaling.md", "An answer invalidated on one replica is gone on every one",
      f"{SHARED_E2E}::test_an_answer_invalidated_on_one_replica_is_gone_on_the_other",
      f"{CACHE_E2E}::test_any_replica_invalidates_an_answer_another_replica_served"),
    C("docs/scaling.md", "every other replica then re-reads its own files at once",
      f"{SHARED}::test_a_reload_is_announced_to_the_other_replicas_only",
      f"{SHARED_E2E}::test_a_reload_on_one_replica_is_announced_to_the_other"),
    C("docs/scaling.md", "either replica gives the same audit over both replicas' rows",
      f"{SHARED_E2E}::test_both_writers_rows_make_one_audit_on_either_replica"),
    C("docs/scaling.md", "Never a 500",
      f"{SHARED_E2E}::test_stopping_redis_degrades_as_documented_and_never_answers_500"),
    C("docs/scaling.md", "The shared state's keys start with `trs:v1:`; the cache keeps to its own prefix",
      f"{SHARED}::test_limit_keys_of_other_prefixes_are_untouched"),
    C("docs/scaling.md", "A request goes to the admitted replica with the fewest requests in flight for its weight",
      f"{POOL}::test_concurrent_requests_go_to_the_replica_with_the_fewest_in_flight_for_its_weight",
      f"{POOL}::test_sequential_requests_are_shared_by_weight"),
    C("docs/scaling.md", "then one request probes it, and an answer re-admits it",
      f"{POOL}::test_an_ejected_replica_is_probed_after_its_cooldown_and_readmitted_when_it_answers"),
    C("docs/scaling.md", "A replica that is busy (`queue_full`) is skipped for that request but not ejected",
      f"{POOL}::test_a_bad_request_and_an_overloaded_replica"),
    C("docs/scaling.md", "one that is ready again is re-admitted at once, with a clean slate",
      f"{POOL}::test_a_replica_that_gets_ready_again_is_readmitted_at_once",
      f"{POOL}::test_the_supervisor_restarts_a_failed_replica_alone"),
    C("docs/scaling.md", "is sent to another replica, each at most once",
      f"{POOL}::test_a_request_that_fails_before_its_first_byte_is_answered_by_another_replica",
      f"{POOL}::test_when_every_replica_fails_the_error_names_each"),
    C("docs/scaling.md", "a stream that broke after its first event is not either",
      f"{POOL}::test_streams_retry_before_the_first_delta_but_not_after"),
    C("docs/scaling.md", "requests are still served while any replica is",
      f"{POOL}::test_min_ready_holds_ready_but_the_replicas_left_still_serve"),
    C("docs/scaling.md", "in a replica they are an error that says so",
      f"{POOL_PROFILE}::test_a_bad_replica_names_the_file_the_key_and_the_fix", f"{POOL_PROFILE}::test_pool_keys_are_checked"),
    C("docs/scaling.md", "The fit check places every replica",
      f"{POOL_PROFILE}::test_the_fit_check_places_every_replica_of_a_pool"),
    C("docs/scaling.md", "Every answered request had its ledger row with the replica its `x-replica` header named",
      "tests/test_pool_e2e.py::test_a_pool_of_two_servers_balances_survives_a_sigkill_and_readmits"),
    C("docs/scaling.md", "Refused at load, with the fix",
      f"{POOL_PROFILE}::test_parallelism_that_cannot_work_is_refused_at_load"),
    C("docs/scaling.md", "One placement per GPU of this node",
      f"{POOL_PROFILE}::test_tensor_parallel_places_a_shard_on_each_gpu_and_needs_them_all",
      f"{POOL_PROFILE}::test_parallelism_flags_pass_through_to_vllm"),
]


def _normalized(text: str) -> str:
    return " ".join(text.split())


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def claim_problems(claims: list[Claim], repo: Path = REPO) -> list[str]:
    """Sentences saying which claim is no longer on its page, or names a test that does not exist."""
    problems, pages, functions = [], {}, {}
    for claim in claims:
        page = repo / claim.page
        if claim.page not in pages:
            pages[claim.page] = _normalized(page.read_text(encoding="utf-8")) if page.exists() else ""
        if _normalized(claim.says) not in pages[claim.page]:
            problems.append(f"{claim.page} no longer says {claim.says!r}: re-check the claim and its tests, "
                            "then quote the page as it reads now")
        if not claim.tests:
            problems.append(f"{claim.page}: {claim.says!r} names no test")
        for test in claim.tests:
            file, _, name = test.partition("::")
            if file not in functions:
                functions[file] = _functions(repo / file) if (repo / file).exists() else set()
            if name not in functions[file]:
                problems.append(f"{claim.page}: {claim.says!r} names {test}, which does not exist")
    return problems


def test_every_claim_is_on_its_page_and_names_tests_that_exist():
    assert not claim_problems(CLAIMS_TABLE), "\n".join(claim_problems(CLAIMS_TABLE))


def test_the_check_fails_for_a_reworded_claim_or_a_missing_test():
    gone = C("docs/keys.md", "body size is unlimited", f"{E2E}::test_body_over_the_limit_is_413")
    missing = C("docs/keys.md", "invalid UTF-8 or JSON (400)", f"{E2E}::test_that_was_never_written")
    problems = claim_problems([gone, missing])
    assert len(problems) == 2 and "no longer says" in problems[0] and "does not exist" in problems[1]


def _figures():
    """(page, what it says, the code's value, the value the page means)."""
    from tiers.cache.index import ANN_MIN
    from tiers.cache.semantic import CachePolicy, SemanticCache
    from tiers.cache.store import Limits
    from tiers.ledger.store import Ledger
    from tiers.recorder import RESERVATION_TTL_S
    from tiers.settings import Settings
    from tiers.shared.state import SharedState
    from tiers.tier_runners import TierRunners

    sweep = SemanticCache.__init__.__kwdefaults__["sweep_interval_s"]
    drain = TierRunners.__init__.__kwdefaults__["drain_timeout_s"]
    redis = SharedState.__init__.__kwdefaults__
    return [
        ("docs/keys.md", "more than 256 messages", Settings().max_messages, 256),
        ("docs/keys.md", "1 MiB by default", Settings().max_body_bytes, 1 << 20),
        ("docs/cache.md", "past 20,000 entries", ANN_MIN, 20_000),
        ("docs/cache.md", "the default is 10,000", CachePolicy().max_entries, 10_000),
        ("docs/cache.md", "`--cache-max-entries` (100,000)", (Limits().max_entries, Settings().cache_max_entries),
         (100_000, 100_000)),
        ("docs/cache.md", "`--cache-max-bytes` (256 MiB)", (Limits().max_bytes, Settings().cache_max_bytes),
         (256 << 20, 256 << 20)),
        ("docs/cache.md", "a sweep every 60 s", sweep, 60),
        ("docs/operations.md", "for up to 600 s", drain, 600),
        ("docs/operations.md", "checked every second", Settings().reload_interval_s, 1),
        ("docs/scaling.md", "every `--reload-interval` seconds (default 1;", Settings().reload_interval_s, 1),
        ("docs/scaling.md", "a reservation never settled expires after an hour", RESERVATION_TTL_S, 3600),
        ("docs/scaling.md", "Every Redis call has a 0.5 s timeout", redis["timeout_s"], 0.5),
        ("docs/scaling.md", "stops calls for a second, then one call (or the PING every 2 s)",
         (redis["retry_s"], redis["probe_s"]), (1.0, 2.0)),
        ("docs/scaling.md", "in one transaction every 0.2 s", Ledger.__init__.__kwdefaults__["flush_interval_s"], 0.2),
    ]


def test_the_numbers_the_docs_quote_are_the_codes():
    from runners.request import MAX_SCHEMA_DEPTH, MAX_SCHEMA_NODES

    figures = _figures() + [("docs/keys.md", "nested deeper than 24 levels", MAX_SCHEMA_DEPTH, 24),
                            ("docs/keys.md", "more than 2,000 values", MAX_SCHEMA_NODES, 2000)]
    for page, says, actual, meant in figures:
        assert _normalized(says) in _normalized((REPO / page).read_text(encoding="utf-8")), (page, says)
        assert actual == meant, f"{page} says {says!r}, the code has {actual}"


def _documented_variables() -> list[tuple[str, click.Command, click.Option]]:
    sys.path.insert(0, str(REPO / "scripts"))
    import docs_reference

    commands = docs_reference.Code.load().commands
    return [(path, command, param) for path, command in sorted(commands.items()) for param in command.params
            if isinstance(param, click.Option) and param.envvar]


def _values(param: click.Option) -> tuple[tuple[str, object], tuple[str, object]]:
    """Two valid values (as typed, as parsed), both unlike the option's default: one for the variable, one for
    the command line."""
    kind = param.type
    if isinstance(kind, click.Choice):
        a, b = [c for c in kind.choices if c != param.default][-2:] if len(kind.choices) > 2 else kind.choices
        return (a, a), (b, b)
    if isinstance(kind, (click.types.IntParamType, click.types.FloatParamType)):
        base = param.default or 0
        cast = float if isinstance(kind, click.types.FloatParamType) else int
        return (str(base + 7), cast(base + 7)), (str(base + 9), cast(base + 9))
    if isinstance(kind, click.Path):
        return ("/tmp/from-the-environment", Path("/tmp/from-the-environment")), \
            ("/tmp/from-the-command-line", Path("/tmp/from-the-command-line"))
    return ("from-the-environment", "from-the-environment"), ("from-the-command-line", "from-the-command-line")


def _context(command: click.Command, args: list[str]) -> click.Context:
    required = [p for p in command.params if isinstance(p, click.Argument) and p.required]
    return command.make_context(command.name, [*args, *(["x"] * len(required))], resilient_parsing=False)


@pytest.mark.parametrize("path,command,param", _documented_variables(),
                         ids=lambda v: v if isinstance(v, str) else getattr(v, "name", ""))
def test_every_documented_variable_is_read_by_its_option_and_the_option_wins(path, command, param, monkeypatch):
    """docs/operations.md: an option with a variable in its row reads it; the command line wins over it."""
    variable = param.envvar if isinstance(param.envvar, str) else param.envvar[0]
    if param.is_flag:
        monkeypatch.setenv(variable, "1")
        assert _context(command, []).params[param.name] is True, f"{path} {param.opts[0]} does not read {variable}"
        return
    (env_raw, from_env), (cli_raw, from_cli) = _values(param)
    monkeypatch.setenv(variable, env_raw)
    assert _context(command, []).params[param.name] == from_env, f"{path} {param.opts[0]} does not read {variable}"
    assert _context(command, [param.opts[0], cli_raw]).params[param.name] == from_cli, "the option must win"


def test_log_level_reads_tier_runner_log_level(tmp_path):
    """`serve` validates TIER_RUNNER_LOG_LEVEL like --log-level (a bad value stops it, naming the option)."""
    env = {**os.environ, "TIER_RUNNER_LOG_LEVEL": "loud"}
    result = subprocess.run([sys.executable, "-m", "tiers", "serve", "--profile", str(tmp_path / "none.yaml"),
                             "--port", "0", "--data-dir", str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)  # options are read before the (missing) profile is
    assert result.returncode == 2, result.stderr[-2000:]
    assert re.search(r"Invalid value for '--log-level'.*'loud'", result.stderr), result.stderr[-2000:]
