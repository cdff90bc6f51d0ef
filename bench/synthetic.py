"""(work in progress)"""


def add_parser(sub):
    pass
