"""mtt_fast.experts"""
