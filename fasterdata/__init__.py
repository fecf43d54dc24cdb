"""fasterdata: a PostgreSQL wire proxy that taps every statement into Redis Streams, and the workers that
turn the stream into insight.

The parts live in sub-packages, each usable alone: `fasterdata.proxy` (the wire proxy and the event
contract), `fasterdata.analyzers` (workers, rules, ledger cache) and `fasterdata.config` (settings). This
package holds only what sits above them: the one command line and the demo that runs them together.
"""
