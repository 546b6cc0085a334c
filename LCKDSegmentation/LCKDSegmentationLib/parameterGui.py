"""The parameter node's connection to the panel's widgets, as Slicer's module template makes it.

``connectGui`` returns a tag that ``disconnectGui`` takes (Slicer >= 5.10). On Slicer 5.8 it
returns None and a connection cannot be undone: the connected wrapper is kept and reused for the
same parameter node, so leaving and entering the module never connects the widgets twice.
"""

from __future__ import annotations

from typing import Dict, Optional


class ParameterNodeGui:
    def __init__(self, gui) -> None:
        self.gui = gui
        self.wrapper = None
        self.tag = None
        self._permanent: Dict[str, object] = {}  # parameter node ID -> wrapper connected for good (5.8)

    @staticmethod
    def _key(wrapper) -> Optional[str]:
        return wrapper.parameterNode.GetID() if wrapper is not None else None

    def connect(self, wrapper):
        """Connect ``wrapper`` (or None) to the widgets; returns the wrapper the panel must use."""
        if wrapper is not None and self.wrapper is not None and self._key(wrapper) == self._key(self.wrapper):
            return self.wrapper
        self.disconnect()
        if wrapper is None:
            return None
        kept = self._permanent.get(self._key(wrapper))
        if kept is not None:
            self.wrapper = kept
            return kept
        self.wrapper, self.tag = wrapper, wrapper.connectGui(self.gui)
        if self.tag is None:
            self._permanent[self._key(wrapper)] = wrapper
        return wrapper

    def disconnect(self) -> None:
        """Disconnect the widgets from the current wrapper where Slicer allows it."""
        if self.wrapper is not None and self.tag is not None:
            self.wrapper.disconnectGui(self.tag)
        self.wrapper, self.tag = None, None

    def forget(self) -> None:
        """The scene was closed: its parameter nodes are gone."""
        self.disconnect()
        self._permanent.clear()
