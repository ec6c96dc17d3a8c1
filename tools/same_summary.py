"""Whether two runs' results/metrics/summary.csv are equal in every value (pandas.testing.assert_frame_equal,
exact): python tools/same_summary.py A/summary.csv B/summary.csv. For a change that must leave the numbers as
they were, e.g. a redesign: run the default study at both commits and compare their summaries."""
import sys

import pandas as pd
from pandas.testing import assert_frame_equal

if len(sys.argv) != 3:
    raise SystemExit(__doc__)
a, b = (pd.read_csv(path) for path in sys.argv[1:])
assert_frame_equal(a, b, check_exact=True)
print(f"equal: {len(a)} rows x {len(a.columns)} columns, every value")
