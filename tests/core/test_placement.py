"""The one rule placers share: a task name goes back to its last host while it is up."""

from overlaysim.core.placement import LastHosts


def test_a_new_name_has_no_sticky_host() -> None:
    assert LastHosts().sticky("web.1", {"h1", "h2"}) is None


def test_a_placed_name_goes_back_to_its_host_while_that_host_is_up() -> None:
    last = LastHosts()
    last.placed("web.1", "h2")
    assert last.sticky("web.1", {"h1", "h2"}) == "h2"
    assert last.sticky("web.1", ["h1", "h2", "h3"]) == "h2"  # any container of names
    assert last.sticky("web.2", {"h1", "h2"}) is None  # per name, not per service


def test_a_down_last_host_frees_the_name_and_the_new_place_is_remembered() -> None:
    last = LastHosts()
    last.placed("web.1", "h2")
    assert last.sticky("web.1", {"h1", "h3"}) is None  # h2 is down: the placer picks
    last.placed("web.1", "h3")
    assert last.sticky("web.1", {"h1", "h2", "h3"}) == "h3"  # the newest place wins
