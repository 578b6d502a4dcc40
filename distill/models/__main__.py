"""`python -m distill.models`: the registered students and teachers (distill/programs/list_models.py)."""
from distill.programs.list_models import cli

cli()
