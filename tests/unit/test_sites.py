import pytest

from interp.model.sites import HOOKS, Site, UnknownSiteError, parse_sites


def test_short_names_expand_to_every_layer():
    sites = parse_sites("resid_post", n_layers=4)
    assert sites == [Site("resid_post", l) for l in range(4)]
    assert sites[2].tl_name == "blocks.2.hook_resid_post"


def test_ranges_full_names_and_dedup():
    sites = parse_sites("z:1-2,blocks.2.attn.hook_z,blocks.0.hook_mlp_out", n_layers=4)
    assert sites == sorted([Site("z", 1), Site("z", 2), Site("mlp_out", 0)])


def test_every_hook_has_a_tl_name():
    for hook in HOOKS:
        name = Site(hook, 3).tl_name
        assert parse_sites(name, n_layers=4) == [Site(hook, 3)]


@pytest.mark.parametrize("spec,hint", [
    ("resid_pots", "resid_post"),
    ("blocks.1.hook_resid_psot", "blocks.1.hook_resid_post"),
    ("attn_outt", "attn_out"),
])
def test_unknown_hook_suggests_nearest(spec, hint):
    with pytest.raises(UnknownSiteError) as e:
        parse_sites(spec, n_layers=4)
    msg = str(e.value)
    assert f"unknown hook '{spec}'" in msg and hint in msg and "\n" not in msg


def test_layer_out_of_range():
    with pytest.raises(UnknownSiteError, match=r"layers 0\.\.3"):
        parse_sites("resid_post:7", n_layers=4)
    with pytest.raises(UnknownSiteError, match="out of range"):
        parse_sites("blocks.9.hook_resid_pre", n_layers=4)


def test_empty_spec():
    with pytest.raises(UnknownSiteError, match="no hooks"):
        parse_sites("", n_layers=4)
