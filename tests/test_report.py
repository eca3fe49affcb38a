import pandas as pd

from dropens.reporting.tables import markdown_table


def test_markdown_table_hand_computed():
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    assert markdown_table(df) == "| a | b |\n|---|---|\n| 1 | x |\n| 2 | y |"
