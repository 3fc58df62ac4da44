"""The filter language, ordering, pagination and the query templates."""

from __future__ import annotations

import math

import pytest

from mltrail.errors import InvalidInputError, QuerySyntaxError


def build_catalog(store):
    """Create five runs with varied params, tags and metrics; return them by name."""
    experiment = store.create_experiment("search")
    other = store.create_experiment("other")
    specs = {
        "alpha": ({"optimizer": {"name": "adam", "lr": 0.001}, "layers": 3, "flag": True,
                   "dotted.key": 7, "text": "a'b"},
                  {"team": "vision", "owner": "ana", "space key": "x"},
                  {"val_acc": 0.91, "loss": 0.3}),
        "beta": ({"optimizer": {"name": "sgd", "lr": 0.1}, "layers": 5, "flag": False},
                 {"team": "vision", "owner": "bo"},
                 {"val_acc": 0.85, "loss": math.nan}),
        "gamma": ({"optimizer": {"name": "adam", "lr": 0.01}, "layers": 5.0},
                  {"team": "nlp"},
                  {"val_acc": 0.95}),
        "delta": ({"optimizer": {"name": "sgd", "lr": 0.5}, "layers": "five"},
                  {"team": "nlp", "owner": "cy"},
                  {}),
        "epsilon": ({"optimizer": {"name": "Adam", "lr": math.inf}},
                    {},
                    {"val_acc": -math.inf, "loss": -0.0}),
    }
    runs = {}
    for name, (params, tags, metrics) in specs.items():
        target = other if name == "epsilon" else experiment
        run = store.create_run(target.id, name=name, params=params, tags=tags)
        if metrics:
            store.log_metrics(run.id, [{"key": k, "value": v, "step": 1}
                                       for k, v in metrics.items()])
        runs[name] = run
    return runs


FILTER_CASES = {
    "eq_string": ("params.optimizer.name = 'adam'", {"alpha", "gamma"}),
    "eq_is_case_sensitive": ("params.optimizer.name = 'Adam'", {"epsilon"}),
    "neq_string": ("params.optimizer.name != 'adam'", {"beta", "delta", "epsilon"}),
    "lt_float": ("params.optimizer.lr < 0.05", {"alpha", "gamma"}),
    "le_float": ("params.optimizer.lr <= 0.1", {"alpha", "beta", "gamma"}),
    "gt_float": ("params.optimizer.lr > 0.1", {"delta", "epsilon"}),
    "ge_float": ("params.optimizer.lr >= 0.1", {"beta", "delta", "epsilon"}),
    "int_equals_float": ("params.layers = 5", {"beta", "gamma"}),
    "float_literal_equals_int": ("params.layers = 5.0", {"beta", "gamma"}),
    "number_vs_string_unequal": ("params.layers != 5", {"alpha", "delta"}),
    "string_not_less_than_number": ("params.layers < 100", {"alpha", "beta", "gamma"}),
    "bool_true": ("params.flag = true", {"alpha"}),
    "bool_false": ("params.flag = false", {"beta"}),
    "bool_not_number": ("params.flag = 1", set()),
    "bool_no_order": ("params.flag > false", set()),
    "in_strings": ("tags.owner in ('ana', 'cy', 'zed')", {"alpha", "delta"}),
    "not_in": ("tags.owner not in ('ana')", {"beta", "delta"}),
    "in_numbers": ("params.layers in (3, 7)", {"alpha"}),
    "like_prefix": ("params.optimizer.name like 'ad%'", {"alpha", "gamma"}),
    "like_single_char": ("params.optimizer.name like 's_d'", {"beta", "delta"}),
    "like_case_sensitive": ("params.optimizer.name like 'A%'", {"epsilon"}),
    "not_like": ("params.optimizer.name not like 'ad%'", {"beta", "delta", "epsilon"}),
    "like_non_string": ("params.layers like '5%'", {"delta"} - {"delta"}),
    "exists": ("tags.owner exists", {"alpha", "beta", "delta"}),
    "not_exists": ("tags.owner not exists", {"gamma", "epsilon"}),
    "missing_matches_nothing": ("params.missing = 1", set()),
    "missing_not_equal_matches_nothing": ("params.missing != 1", set()),
    "missing_under_not": ("not params.missing = 1", set()),
    "and": ("tags.team = 'vision' and params.layers = 5", {"beta"}),
    "or": ("tags.team = 'nlp' or params.flag = true", {"alpha", "gamma", "delta"}),
    "not": ("not tags.team = 'vision'", {"gamma", "delta"}),
    "and_binds_tighter": ("tags.team = 'nlp' or tags.team = 'vision' and params.flag = "
                          "true", {"alpha", "gamma", "delta"}),
    "parentheses": ("(tags.team = 'nlp' or tags.team = 'vision') and params.flag = true",
                    {"alpha"}),
    "not_of_group": ("not (tags.team = 'nlp' or tags.team = 'vision')", set()),
    "keywords_any_case": ("tags.team = 'nlp' AND NOT params.layers = 5", {"delta"}),
    "backtick_key": ("params.`dotted.key` = 7", {"alpha"}),
    "dotted_path_finds_flat_key": ("params.dotted.key = 7", {"alpha"}),
    "backtick_space_key": ("tags.`space key` = 'x'", {"alpha"}),
    "quote_escape": ("params.text = 'a\\'b'", {"alpha"}),
    "double_quoted_string": ('params.text = "a\'b"', {"alpha"}),
    "metric_ge": ("metrics.val_acc >= 0.9", {"alpha", "gamma"}),
    "metric_and_param": ("metrics.val_acc > 0.8 and params.optimizer.name = 'sgd'",
                         {"beta"}),
    "nan_not_equal": ("metrics.loss != 0.3", {"beta", "epsilon"}),
    "nan_never_less": ("metrics.loss < 100", {"alpha", "epsilon"}),
    "nan_literal_never_equal": ("metrics.loss = nan", set()),
    "negative_zero_equals_zero": ("metrics.loss = 0", {"epsilon"}),
    "infinity_param": ("params.optimizer.lr = inf", {"epsilon"}),
    "negative_infinity_metric": ("metrics.val_acc < -1e308", {"epsilon"}),
    "missing_metric": ("metrics.val_acc not exists", {"delta"}),
    "attribute_name": ("name = 'gamma'", {"gamma"}),
    "attribute_status": ("status = 'pending'", {"alpha", "beta", "gamma", "delta",
                                                "epsilon"}),
    "attribute_in": ("name in ('alpha', 'delta')", {"alpha", "delta"}),
    "created_at_string": ("created_at > '2000-01-01T00:00:00Z'",
                          {"alpha", "beta", "gamma", "delta", "epsilon"}),
    "scientific_literal": ("params.optimizer.lr = 1e-3", {"alpha"}),
    "negative_literal": ("params.optimizer.lr > -1", {"alpha", "beta", "gamma", "delta",
                                                      "epsilon"}),
    "unicode_literal": ("tags.team != '视觉'", {"alpha", "beta", "gamma", "delta"}),
}


class CatalogFixture:
    @pytest.fixture
    def catalog(self, store):
        return build_catalog(store)


class FilterCases(CatalogFixture):
    area = "filters"

    @pytest.mark.parametrize("case", sorted(FILTER_CASES))
    def test_filter(self, store, catalog, case):
        text, expected = FILTER_CASES[case]
        found = {run.name for run in store.iter_runs(text)}
        assert found == expected, f"{text!r} matched {sorted(found)}"

    @pytest.mark.parametrize("text,position", [
        ("params.lr <", 11), ("params.lr = 1 and", 17), ("(params.lr = 1", 14),
        ("params.lr ~ 1", 10), ("= 1", 0), ("params.lr in 1", 13),
        ("params.lr like 3", 15), ("params.`unterminated = 1", 7), ("'text' = 1", 0),
        ("params.lr = 'open", 12),
    ])
    def test_syntax_error_position(self, store, text, position):
        with pytest.raises(QuerySyntaxError) as caught:
            store.search_runs(text)
        assert caught.value.position == position
        assert isinstance(caught.value, InvalidInputError)

    def test_experiment_scope(self, store, catalog):
        experiment = store.get_experiment("other")
        found = {r.name for r in store.iter_runs(experiment_ids=[experiment.id])}
        assert found == {"epsilon"}

    def test_namespace_scope(self, store, catalog):
        elsewhere = store.create_experiment("elsewhere", namespace="team-b")
        store.create_run(elsewhere.id, name="outsider")
        found = {r.name for r in store.iter_runs(namespace="team-b")}
        assert found == {"outsider"}

    def test_deleted_runs_hidden(self, store, catalog):
        store.delete_run(catalog["alpha"].id)
        assert "alpha" not in {r.name for r in store.iter_runs()}
        assert "alpha" in {r.name for r in store.iter_runs(include_deleted=True)}

    def test_bad_datetime_literal(self, store, catalog):
        with pytest.raises(InvalidInputError):
            list(store.iter_runs("created_at > 'not a time'"))


class OrderCases(CatalogFixture):
    area = "ordering"

    def test_order_by_param_ascending(self, store, catalog):
        names = [r.name for r in store.iter_runs(order_by=["params.optimizer.lr"])]
        assert names == ["alpha", "gamma", "beta", "delta", "epsilon"]

    def test_order_by_param_descending(self, store, catalog):
        names = [r.name for r in store.iter_runs(order_by=["params.optimizer.lr desc"])]
        assert names == ["epsilon", "delta", "beta", "gamma", "alpha"]

    def test_order_by_metric_missing_and_nan_last(self, store, catalog):
        names = [r.name for r in store.iter_runs(order_by=["metrics.loss asc"])]
        assert names[:2] == ["epsilon", "alpha"]
        assert names[2] == "beta"
        assert set(names[3:]) == {"gamma", "delta"}

    def test_missing_last_when_descending(self, store, catalog):
        names = [r.name for r in store.iter_runs(order_by=["-metrics.val_acc"])]
        assert names == ["gamma", "alpha", "beta", "epsilon", "delta"]

    def test_ties_broken_by_id(self, store, catalog):
        runs = list(store.iter_runs(order_by=["tags.team"]))
        teams = [r.tags.get("team") for r in runs]
        assert teams[:4] == ["nlp", "nlp", "vision", "vision"]
        assert runs[0].id < runs[1].id
        assert runs[2].id < runs[3].id

    def test_order_by_name(self, store, catalog):
        names = [r.name for r in store.iter_runs(order_by="name")]
        assert names == sorted(names)

    def test_order_by_created_at_desc(self, store, catalog):
        runs = list(store.iter_runs(order_by=["created_at desc"]))
        stamps = [r.created_at for r in runs]
        assert stamps == sorted(stamps, reverse=True)

    def test_mixed_types_order(self, store, catalog):
        names = [r.name for r in store.iter_runs(order_by=["params.layers"])]
        assert names[:3] == ["alpha", "beta", "gamma"]
        assert names[3] == "delta"

    def test_bad_order_clause(self, store, catalog):
        with pytest.raises(InvalidInputError):
            store.search_runs(order_by=["params.lr sideways"])


class PaginationCases:
    area = "pagination"

    def _fill(self, store, count=23):
        experiment = store.create_experiment("pages")
        return [store.create_run(experiment.id, name=f"r{i:02d}",
                                 params={"group": i % 3}) for i in range(count)]

    @pytest.mark.parametrize("page_size", [1, 4, 7, 23, 50])
    def test_pages_cover_all_once(self, store, page_size):
        runs = self._fill(store)
        seen = []
        token = None
        while True:
            page = store.search_runs(order_by=["params.group"], page_size=page_size,
                                     page_token=token)
            seen += [r.id for r in page.items]
            token = page.next_page_token
            if token is None:
                break
        assert sorted(seen) == sorted(r.id for r in runs)
        assert len(seen) == len(set(seen))

    def test_pages_follow_order(self, store):
        self._fill(store)
        collected = []
        token = None
        while True:
            page = store.search_runs(order_by=["params.group desc"], page_size=5,
                                     page_token=token)
            collected += page.items
            token = page.next_page_token
            if token is None:
                break
        keys = [(-r.params["group"], r.id) for r in collected]
        assert keys == sorted(keys)

    def test_last_page_has_no_token(self, store):
        self._fill(store, 4)
        page = store.search_runs(page_size=4)
        assert len(page.items) == 4
        assert page.next_page_token is None

    def test_token_rejected_for_other_query(self, store):
        self._fill(store)
        token = store.search_runs("params.group = 1", page_size=2).next_page_token
        with pytest.raises(InvalidInputError):
            store.search_runs("params.group = 2", page_size=2, page_token=token)
        with pytest.raises(InvalidInputError):
            store.search_runs("params.group = 1", order_by=["name"], page_size=2,
                              page_token=token)

    def test_malformed_token(self, store):
        with pytest.raises(InvalidInputError):
            store.search_runs(page_token="not-a-token!")

    def test_token_stable_across_calls(self, store):
        self._fill(store)
        first = store.search_runs(order_by=["name"], page_size=5)
        again = store.search_runs(order_by=["name"], page_size=5)
        assert first.next_page_token == again.next_page_token
        follow = store.search_runs(order_by=["name"], page_size=5,
                                   page_token=first.next_page_token)
        assert [r.name for r in follow.items] == ["r05", "r06", "r07", "r08", "r09"]

    def test_inserts_during_paging(self, store):
        runs = self._fill(store, 10)
        experiment_id = runs[0].experiment_id
        page = store.search_runs(order_by=["name"], page_size=4)
        store.create_run(experiment_id, name="a-before-cursor")
        store.create_run(experiment_id, name="z-after-cursor")
        rest = []
        token = page.next_page_token
        while token:
            next_page = store.search_runs(order_by=["name"], page_size=4, page_token=token)
            rest += [r.name for r in next_page.items]
            token = next_page.next_page_token
        names = [r.name for r in page.items] + rest
        assert names[:4] == ["r00", "r01", "r02", "r03"]
        assert "z-after-cursor" in rest
        assert "a-before-cursor" not in names
        assert len(names) == len(set(names))

    @pytest.mark.parametrize("bad", [0, -1, 10_001, True, "5"])
    def test_bad_page_size(self, store, bad):
        with pytest.raises(InvalidInputError):
            store.search_runs(page_size=bad)
