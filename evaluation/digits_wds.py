"""Write the demo digits as CLIP_benchmark webdataset sets (the same train / held-out split as data/digits).

python evaluation/digits_wds.py data/digits_wds
-> data/digits_wds/digits/{train,test}/0.tar (PNG + .cls), classnames.txt,
   zeroshot_classification_templates.txt; data/digits_wds/digits_captions/test/0.tar (PNG + .txt)
"""

import argparse

from siglip.data.digits import write_wds
from siglip.eval.prompts import DIGITS_TEMPLATES

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("out", help="output folder, e.g. data/digits_wds")
print(f"wrote {write_wds(parser.parse_args().out, DIGITS_TEMPLATES)}")
