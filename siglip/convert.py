"""`python -m siglip.convert`: kept for the commands people already have; the code is `siglip.interop`."""

from siglip.interop.__main__ import main

if __name__ == "__main__":
    main()
