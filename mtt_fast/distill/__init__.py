"""mtt_fast.distill"""
