"""The faces of ssn: the command line, evaluation, sampling, the demo and figures."""
