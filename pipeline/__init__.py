"""wspsr core: the stage contract, schemas and audio constants, media I/O, the Ray runner and output commit.

Nothing in this package imports a particular stage or job.
"""
