"""Evolution scenarios (`evolvers.base.Scenario`): each builds prompts and parses replies, the
pipeline generates. The registry is `evolvers.base.SCENARIOS`."""
