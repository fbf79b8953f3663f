"""`python -m portfolio.cli`, or this file given to `spark-submit`."""

from portfolio.cli import main

if __name__ == "__main__":
    main()
