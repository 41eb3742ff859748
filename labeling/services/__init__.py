"""Write paths of the labeling domain (HackSoft style: keyword-only functions, full_clean, transactions)."""
