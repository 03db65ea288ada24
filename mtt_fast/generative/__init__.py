"""mtt_fast.generative"""
