"""mtt_fast.evaluate"""
