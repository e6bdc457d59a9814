"""Epoch-driven schedules shared by the objectives' curricula (margins, mining, crop lengths).

Everything here is a pure function of the epoch (epochs start at 1), so a resumed run that
calls on_epoch_start(epoch) gets exactly the state an uninterrupted run had.
List-valued options arrive as lists (YAML lists, or several values after the flag); a
comma-separated string ("0.40,0.35,0.32") is accepted too.
"""
from speakernet.core.errors import OptionError


def parse_list(values, convert, option):
    """[a, b, c] or 'a,b,c' -> [convert(a), ...]; None, '' or [] -> []."""
    if values is None:
        return []
    if isinstance(values, str):
        values = values.split(",")
    items = [str(v).strip() for v in values if str(v).strip()]
    try:
        return [convert(item) for item in items]
    except ValueError:
        raise OptionError(f"--{option} {' '.join(items)}: expected {convert.__name__} "
                          f"values") from None


def parse_intervals(values, option):
    """['200-400', '300-500'] -> [(200, 400), (300, 500)], each with 0 < low < high."""
    intervals = []
    for item in parse_list(values, str, option):
        low, sep, high = item.partition("-")
        try:
            low, high = int(low), int(high)
        except ValueError:
            low = high = None
        if not sep or low is None or not 0 < low < high:
            raise OptionError(f"--{option}: '{item}' is not an interval 'low-high' of frames "
                              f"with 0 < low < high (e.g. 200-400)")
        intervals.append((low, high))
    return intervals


def stage_of(epoch, stage_starts):
    """Index of the stage `epoch` falls in; stage k > 0 begins at epoch stage_starts[k-1]."""
    return sum(epoch >= start for start in stage_starts)


def check_stage_starts(stage_starts, option):
    if any(s < 2 for s in stage_starts) or list(stage_starts) != sorted(set(stage_starts)):
        raise OptionError(f"--{option} {stage_starts}: stage starts must be increasing epochs "
                          f"after epoch 1 (stage 1 always starts at epoch 1)")


def held_then_ramped(epoch, initial, final, hold_epochs, ramp_epochs):
    """`initial` for the first `hold_epochs` epochs, then `final` (at once when ramp_epochs is
    0, else reached linearly after ramp_epochs more epochs)."""
    past = epoch - hold_epochs
    if past <= 0:
        return initial
    if ramp_epochs <= 0:
        return final
    return initial + (final - initial) * min(1.0, past / ramp_epochs)
