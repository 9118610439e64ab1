"""Beam pipeline options from the command line: --runner plus that runner's own flags, unknown flags refused."""

BEAM_MISSING = "apache-beam is not installed: pip install 'steel_tpu[beam]' (the optional Beam extra)"


def pipeline_options(runner, flags=()):
    """PipelineOptions for `runner` and `flags` (e.g. --project=... --region=...); a flag Beam does not know raises.

    Beam itself only warns and drops an unknown flag: a misspelt --temp_location would then fail on the cluster.
    """
    try:
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError:
        raise ValueError(BEAM_MISSING) from None
    options = PipelineOptions([f"--runner={runner}", *flags])
    known = options.get_all_options()
    unknown = sorted(set(options.get_all_options(retain_unknown_options=True)) - set(known))
    if unknown:
        raise ValueError(f"unknown pipeline option(s) {', '.join('--' + u for u in unknown)} for --runner {runner} "
                         "(see Beam's pipeline options; steel-tpu's own options come before them)")
    return options
