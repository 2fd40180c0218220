"""``manage.py visualsearch_switch``: the encoder switch (blue/green) — where it stands, start
it now, build it here, take over.

Without options it prints the serving and the building encoder, the progress and an ETA.
``--start`` starts the switch to the configured encoder now instead of at the next sweep
(the workers build it); ``--inline`` builds it in this process; ``--cut-over`` makes the
building encoder serve once it covers ``SWITCH_COVERAGE`` (``--force``: now, whatever it
covers; rows it lacks are embedded afterwards).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from visualsearch.ingest import switch
from visualsearch.ingest.tasks import cut_over, enqueue, enqueue_build
from visualsearch.storage.layout import image_storage


class Command(BaseCommand):
    help = "Show, start, build or finish the switch to the configured image encoder."

    def add_arguments(self, parser: CommandParser) -> None:
        action = parser.add_mutually_exclusive_group()
        action.add_argument("--start", action="store_true", help="start it, workers build")
        action.add_argument("--inline", action="store_true", help="build it here, then cut over")
        action.add_argument("--cut-over", action="store_true", help="take over when covered")
        parser.add_argument("--force", action="store_true", help="with --cut-over: take over now")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["force"] and not options["cut_over"]:
            raise CommandError("--force goes with --cut-over.")
        if options["start"]:
            started = switch.sync()
            if started is not None and cut_over():
                self.stdout.write(f"{started.model_id} serves now.")
            elif started is not None:
                self.stdout.write(f"Sent {enqueue_build(started)} image(s) to the workers.")
        elif options["inline"]:
            pending = switch.run_inline()
            if pending is not None:
                enqueue(image_storage().model, pending)
                self.stdout.write("The configured encoder serves now.")
        elif options["cut_over"]:
            if not cut_over(force=options["force"]):
                raise CommandError(
                    "Nothing took over: no switch is building, or it does not cover "
                    "SWITCH_COVERAGE yet (--force takes over now)."
                )
            self.stdout.write(self.style.SUCCESS("The configured encoder serves now."))
        self._report()

    def _report(self) -> None:
        state = switch.progress()
        if state is None:
            self.stdout.write("No encoder generation recorded yet (the first embedding does).")
            return
        self.stdout.write(f"Serving:  {state.serving}")
        if state.note:
            self.stdout.write(self.style.WARNING(state.note))
        if not state.building:
            self.stdout.write("Building: nothing (the configured encoder serves).")
            return
        eta = state.eta_seconds
        self.stdout.write(
            f"Building: {state.building}: {state.covered} of {state.total} image(s) "
            f"({state.share:.1%}), {state.failed} failed"
            + ("" if eta is None else f", about {eta:.0f} s left")
        )
