"""Data loading: where bad values are, and data a continuous flow cannot fit."""

import warnings

import numpy as np
import pytest
import torch

from pyro_flows.data.splits import Splits
from pyro_flows.data.tabular import load_array, load_tabular_splits
from pyro_flows.train.config import RunConfig


def _csv(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# A NaN or infinite value is located by its row, its column and, in a CSV, its line -------


def test_a_nan_in_a_csv_is_named_by_line_and_column(tmp_path):
    rows = "".join(f"{i},{i % 7},{i % 5}\n" for i in range(20))
    path = _csv(tmp_path, "x.csv", "a,b,c\n" + rows + "3,nan,1\n" + rows)
    with pytest.raises(
        ValueError,
        match=r"x.csv: 1 of 41 rows contain NaN or infinite values \(first: row 20\): "
        r"line 22, column 1 \(0-based; 'b'\) holds 'nan'; remove or impute them",
    ):
        load_tabular_splits(path, RunConfig())


def test_an_empty_csv_cell_is_reported_as_empty_not_as_nan(tmp_path):
    # no header; blank lines before and inside the data still count as lines of the file
    path = _csv(tmp_path, "y.csv", "\n1,2\n\n3,4\n5,\n6,7\n8,9\n")
    with pytest.raises(
        ValueError, match=r"\(first: row 2\): line 5, column 1 \(0-based\) is empty; remove or impute them"
    ):
        load_tabular_splits(path, RunConfig())


def test_an_infinite_value_in_an_array_is_named_by_row_and_columns(tmp_path):
    x = np.random.default_rng(0).normal(size=(30, 4))
    x[12, 3], x[12, 1], x[20, 0] = np.inf, np.nan, np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(
        ValueError,
        match=r"x.npy: 2 of 30 rows contain NaN or infinite values \(first: row 12\): "
        r"columns 1, 3 \(0-based\) hold nan, inf; remove or impute them",
    ):
        load_tabular_splits(str(tmp_path / "x.npy"), RunConfig())
    np.savez(tmp_path / "parts.npz", train=x[:10], val=x[20:25], test=x[25:])
    with pytest.raises(ValueError, match=r"parts.npz \[val\]: 1 of 5 rows .* \(first: row 0\): column 0 "):
        load_tabular_splits(str(tmp_path / "parts.npz"), RunConfig())


def test_a_csv_overflowing_to_infinity_is_named_by_its_text(tmp_path):
    path = _csv(tmp_path, "big.csv", "a,b\n1,2\n3,1e400\n5,6\n")
    with pytest.raises(ValueError, match=r"line 3, column 1 \(0-based; 'b'\) holds '1e400'"):
        load_tabular_splits(path, RunConfig())


# The line a CSV's width comes from ---------------------------------------------------------


def test_the_width_of_a_csv_is_named_after_the_line_it_came_from(tmp_path):
    path = _csv(tmp_path, "z.csv", "\n\na,b\n1,2\n3\n")
    with pytest.raises(ValueError, match=r"line 5 has 1 columns, expected 2 \(as in line 3\)"):
        load_array(path)
    # a quoted header cell over two lines: the data start on line 3
    path = _csv(tmp_path, "q.csv", '"first\ncolumn",b\n1,2\n3\n')
    with pytest.raises(ValueError, match=r"line 4 has 1 columns, expected 2 \(as in line 1\)"):
        load_array(path)


def test_an_array_without_columns_is_empty(tmp_path):
    np.save(tmp_path / "none.npy", np.zeros((50, 0)))
    with pytest.raises(ValueError, match=r"none.npy is empty \(shape \(50, 0\)\)"):
        load_array(str(tmp_path / "none.npy"))


# Columns of few values (counts, integers, coarse rounding) -----------------------------------


def test_a_column_of_few_values_warns_that_the_nll_can_fall_forever():
    # a continuous flow fitted to integer values 0..2 put spikes on them: test NLL -10.4
    # nats per point after 1500 steps on 2 such columns, far below any density's
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g, dtype=torch.float64)
    x[:, 1] = torch.randint(0, 3, (200,), generator=g).double()
    with pytest.warns(
        UserWarning, match=r"demo: column 1 \(0-based\) takes only 3 distinct values in 200 training points"
    ):
        Splits("demo", x, x[:5], x[:5]).check_spread()
    x[:, 2] = (x[:, 2] * 10).round() / 10  # one decimal: about 40 values over 200 points
    with pytest.warns(UserWarning, match=r"columns 1, 2 \(0-based\) take only 3, \d\d distinct values"):
        Splits("demo", x, x[:5], x[:5]).check_spread()


def test_continuous_and_discrete_data_pass_the_check_without_a_warning():
    import warnings

    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g, dtype=torch.float64)
    levels = torch.randint(0, 4, (500, 3), generator=g).double()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Splits("fine", x, x[:5], x[:5]).check_spread()
        Splits("levels", levels, levels[:5], levels[:5], levels=4).check_spread()
        # few points: ties among 12 values are not a sign of discrete data
        small = torch.randint(0, 9, (12, 2), generator=g).double()
        small[:, 1] = torch.arange(12.0)
        Splits("small", small, small[:2], small[:2]).check_spread()


# Standardization: training statistics only, and its log-determinant added back once --------


def test_the_nll_in_data_units_adds_the_log_determinant_of_the_standardization_once(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3)) * np.array([0.01, 3.0, 200.0]) + np.array([5.0, -1.0, 1e4])
    x[-1] = [1e3, 1e3, 1e6]  # an outlier: it moves the mean and sd only if it reached them
    np.save(tmp_path / "x.npy", x)
    splits = load_tabular_splits(str(tmp_path / "x.npy"), RunConfig(val_fraction=0.1, test_fraction=0.1))
    again = load_tabular_splits(str(tmp_path / "x.npy"), RunConfig(val_fraction=0.1, test_fraction=0.1))
    assert all(torch.equal(getattr(splits, k), getattr(again, k)) for k in ("train", "val", "test", "scale"))
    train = splits.train.numpy()
    assert np.allclose(splits.shift.numpy(), train.mean(0), rtol=1e-12)
    assert np.allclose(splits.scale.numpy(), train.std(0), rtol=1e-12)
    # a standard normal on the standardized data is N(mean, sd^2) in data units
    base = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    nll = -base.log_prob(splits.prepare(splits.test)).sum(-1) + splits.nll_offset()
    exact = -torch.distributions.Normal(splits.shift, splits.scale).log_prob(splits.test).sum(-1)
    assert torch.allclose(nll, exact, rtol=0, atol=1e-9)
    assert splits.nll_offset() == pytest.approx(float(np.log(train.std(0)).sum()), rel=1e-12)


def test_few_values_are_counted_over_a_random_subset_of_a_large_split():
    # 30,000 points in time order: a slow drift of 20 levels (each a run of 1,500 equal
    # values) and a continuous column; the first 10,000 points alone would see 7 levels
    g = torch.Generator().manual_seed(0)
    x = torch.stack(
        [
            torch.arange(30_000, dtype=torch.float64) // 1500,
            torch.randn(30_000, generator=g, dtype=torch.float64),
        ],
        -1,
    )
    with pytest.warns(UserWarning, match=r"big: column 0 \(0-based\) takes only 20 distinct values in 10000"):
        Splits("big", x, x[:5], x[:5]).check_spread()


def test_a_first_row_read_as_a_header_that_holds_numbers_warns(tmp_path):
    # "NA" in a headerless file's first row makes it a header: that row of data would be
    # lost without a word
    path = tmp_path / "na.csv"
    path.write_text("NA,1.5\n" + "".join(f"{i}.25,{i}.5\n" for i in range(5)))
    with pytest.warns(
        UserWarning, match=r"line 1 was read as a header \(its cell 'NA'.*columns 1 \(0-based\)"
    ):
        x = load_array(str(path))["data"]
    assert x.shape == (5, 2)
    named = tmp_path / "named.csv"
    named.write_text("x,y\n1.0,2.0\n3.0,4.0\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_array(str(named))["data"].shape == (2, 2)
