"""The installer's progress line, as printed by the installer and read by the operator."""

from __future__ import annotations

import io

from lorafleet_operator.report import format_progress, progress_from_log


def test_progress_line_printed_by_the_installer_is_read_by_the_operator() -> None:
    from lorafleet_serving.installer.progress import ProgressReporter

    counter = iter([0, 1048576, 90867098 // 2, 90867098])
    stream = io.StringIO()
    reporter = ProgressReporter(lambda: next(counter), 90867098, stream=stream, label="ml/minilm")
    reporter._tick(force_line=True)
    reporter._tick(force_line=True)
    reporter._tick(force_line=True)
    log = "Fetching 3 files\n" + stream.getvalue() + "WARNING something else\n"
    assert progress_from_log(log) == {"bytesDone": 45433549, "bytesTotal": 90867098}
    assert format_progress(progress_from_log(log)) == "50%"


def test_unknown_total_and_no_progress_line() -> None:
    assert progress_from_log("a/b: 2048/? bytes\n") == {"bytesDone": 2048, "bytesTotal": None}
    assert format_progress(progress_from_log("a/b: 2048/? bytes")) == "2.0 KiB"
    assert progress_from_log("") is None
    assert progress_from_log("copied 3/4 bytes of nothing: maybe\n") is None
