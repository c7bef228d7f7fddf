"""learners: fine-tune small BERT-family encoders with Learner modules and priming."""
