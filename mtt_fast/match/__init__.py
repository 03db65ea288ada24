"""mtt_fast.match"""
