"""mtt_fast.data"""
