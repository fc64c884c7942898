"""Da Vinci DTR (Documentation Templates and Rules) from the same policy file that makes the decision.

``questionnaire``: one Questionnaire per pathway (items from the criteria's leaf tests) and its ValueSets;
``prefill``: the payer-side draft QuestionnaireResponse from the chart seen at order-sign; ``package``: the
``$questionnaire-package`` operation; the clinician's answers come back through ``fhir_mappings.answers``.
"""
