"""Everything that touches bytes outside the process: storage (local paths and object stores), committed output
(the one reader and the one atomic writer), source discovery, ffmpeg (``media``), transcript formats, yt-dlp."""
