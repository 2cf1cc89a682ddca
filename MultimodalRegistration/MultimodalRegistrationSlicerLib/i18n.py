"""Slicer's translation function ``_`` (identity outside Slicer and on Slicer < 5.4)."""
try:  # Slicer >= 5.4
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # pragma: no cover - older Slicer, or outside Slicer
    def _(text):
        return text

    def translate(context, text):
        return text

__all__ = ["_", "translate"]
