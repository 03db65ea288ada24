"""mtt_fast.synth"""
