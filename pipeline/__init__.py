"""wspsr's framework. The root holds the contract every stage and job shares: the stage (``stage``), schemas and
reason codes (``schema``), audio constants (``audio``), text and script rules (``text``), config (``config``), job
arguments (``jobargs``) and fault injection (``faults``). Sub-packages, each one concern:

- ``run``: the only modules that import Ray (the Data plan, Ray Train, stage timing);
- ``io``: storage, the committed-output reader and the atomic writer, source discovery, ffmpeg, transcript
  formats, yt-dlp;
- ``sinks``: what each job commits per shard, over one accounting rule;
- ``whisper``: engines, model resolution, the CTranslate2 converter, fine-tuning steps;
- ``eval``: labels, the corpus report, error-rate metrics, held-out splits.

Nothing here imports a stage or a job.

For readers of a corpus: ``from pipeline import load_corpus`` (``pipeline.io.commit.load_corpus``).
"""


def load_corpus(root, streaming: bool = False, decode_audio: bool | None = None):
    """A ``wspsr corpus`` folder's committed windows as a Hugging Face ``datasets`` dataset (see
    ``pipeline.io.commit.load_corpus``)."""
    from pipeline.io.commit import load_corpus as load

    return load(root, streaming=streaming, decode_audio=decode_audio)
