"""The file backend of the log: segment files on local disk (`file://DIR` or a path).

    log.py           FileLog: the `Log` on disk; the layout and the guarantees
    streams.py       stream names and the metadata file fixing a stream's partition count
    frames.py        one record per frame: length-prefixed, CRC-32C checked
    segments.py      a partition's segment files and the read side
    writer.py        the write side of one partition: locking, tail recovery, undo
    txn.py           transactions and consumer-group positions: the protocol and why it is safe
    txn_records.py   the transaction record: what it holds, how it is written and read back
    groups.py        committed positions of consumer groups, one JSON file per group
"""

from streamrl.log.file.log import FileLog

__all__ = ["FileLog"]
