"""The BareMetalHost controller: reconciler, state machine, status rules and metrics."""

from metal3.controllers.baremetalhost.reconciler import BareMetalHostReconciler
from metal3.controllers.baremetalhost.state_machine import Settings

__all__ = ["BareMetalHostReconciler", "Settings"]
